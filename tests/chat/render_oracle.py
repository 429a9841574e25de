#!/usr/bin/env python3
"""The oracle for stip's chat templates: renders a chat template with
jinja2 exactly as Hugging Face transformers' apply_chat_template sets it up
(transformers/utils/chat_template_utils.py: ImmutableSandboxedEnvironment
with trim_blocks and lstrip_blocks and the loopcontrols extension; tojson
is json.dumps with ensure_ascii=False; raise_exception; strftime_now).

usage: render_oracle.py TEMPLATE_SOURCE CONTEXT.json
  TEMPLATE_SOURCE: a model directory (chat_template.jinja, else
  tokenizer_config.json's chat_template, "default" if it is a list), or a
  file holding the template itself.
  CONTEXT.json: {"messages": [...], "add_generation_prompt": bool, ...}; the
  special tokens (bos_token, eos_token, ...) are added from the directory's
  tokenizer_config.json unless given.
Prints the rendered text (nothing else) or "ERROR: <message>" with status 3.
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


def main():
    template, config = load(sys.argv[1])
    with open(sys.argv[2], encoding="utf-8") as f:
        context = json.load(f)

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
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token",
                "mask_token"):
        if key not in context and config.get(key) is not None:
            context[key] = token_content(config[key])
    context.setdefault("tools", None)
    context.setdefault("documents", None)
    try:
        out = env.from_string(template).render(**context)
    except Exception as e:  # the template's own error, reported like ours
        sys.stdout.write("ERROR: " + str(e))
        sys.exit(3)
    sys.stdout.write(out)


if __name__ == "__main__":
    main()
