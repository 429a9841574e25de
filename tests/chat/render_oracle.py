#!/usr/bin/env python3
"""The oracle for stip's chat templates: renders a chat template with
jinja2 exactly as Hugging Face transformers' apply_chat_template sets it up
(transformers/utils/chat_template_utils.py: ImmutableSandboxedEnvironment
with trim_blocks and lstrip_blocks and the loopcontrols extension; tojson
is json.dumps with ensure_ascii=False; raise_exception; strftime_now).

usage: render_oracle.py TEMPLATE_SOURCE CONTEXT.json
       render_oracle.py --conversations TEMPLATE_SOURCE CONVERSATIONS.json
       render_oracle.py --cases CASES.json
  TEMPLATE_SOURCE: a model directory (chat_template.jinja, else
  tokenizer_config.json's chat_template, "default" if it is a list), or a
  file holding the template itself.
  CONTEXT.json: {"messages": [...], "add_generation_prompt": bool, ...}; the
  special tokens (bos_token, eos_token, ...) are added from the directory's
  tokenizer_config.json unless given.
Prints the rendered text (nothing else) or "ERROR: <message>" with status 3.

--conversations: for each {"messages": [...]} of the list, renders with and
without the generation prompt; prints a JSON list of
{"with_prompt": R, "without_prompt": R}, R = {"text": ...} or {"error": ...}.
--cases: for each {"template": ..., "context": {...}}, prints R (a JSON list).
"""
import json
import os
import sys
from datetime import datetime

import jinja2
import jinja2.ext
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def token_content(value):
    if isinstance(value, dict):
        return value.get("content")
    return value


def load(source):
    config = {}
    if os.path.isdir(source):
        cfg_path = os.path.join(source, "tokenizer_config.json")
        if os.path.exists(cfg_path):
            with open(cfg_path, encoding="utf-8") as f:
                config = json.load(f)
        jinja_path = os.path.join(source, "chat_template.jinja")
        if os.path.exists(jinja_path):
            with open(jinja_path, encoding="utf-8") as f:
                return f.read(), config
        template = config.get("chat_template")
        if isinstance(template, list):
            template = {t["name"]: t["template"] for t in template}.get("default")
        return template, config
    with open(source, encoding="utf-8") as f:
        return f.read(), config


def environment():
    def raise_exception(message):
        raise TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


def render(env, template, context, config):
    context = dict(context)
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                "mask_token"):
        if key not in context and config.get(key) is not None:
            context[key] = token_content(config[key])
    context.setdefault("tools", None)
    context.setdefault("documents", None)
    try:
        return {"text": env.from_string(template).render(**context)}
    except Exception as e:  # the template's own error, reported like ours
        return {"error": "%s: %s" % (type(e).__name__, e)}


def main():
    env = environment()
    if sys.argv[1] == "--cases":
        with open(sys.argv[2], encoding="utf-8") as f:
            cases = json.load(f)
        out = [render(env, c["template"], c.get("context", {}), {}) for c in cases]
        sys.stdout.write(json.dumps(out, ensure_ascii=False))
        return
    if sys.argv[1] == "--conversations":
        template, config = load(sys.argv[2])
        with open(sys.argv[3], encoding="utf-8") as f:
            conversations = json.load(f)
        out = []
        for c in conversations:
            r = {}
            for key, prompt in (("with_prompt", True), ("without_prompt", False)):
                r[key] = render(env, template, {"messages": c["messages"],
                                                "add_generation_prompt": prompt}, config)
            out.append(r)
        sys.stdout.write(json.dumps(out, ensure_ascii=False))
        return
    template, config = load(sys.argv[1])
    with open(sys.argv[2], encoding="utf-8") as f:
        context = json.load(f)
    r = render(env, template, context, config)
    if "error" in r:
        sys.stdout.write("ERROR: " + r["error"])
        sys.exit(3)
    sys.stdout.write(r["text"])


if __name__ == "__main__":
    main()
