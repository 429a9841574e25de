#include "common/audit/audit_report.h"

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "common/error.h"
#include "common/util/files.h"

extern char** environ;

namespace stip {

namespace {

using json = nlohmann::ordered_json;

std::string Fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}
std::string Pct(const json& v) {
  return v.is_number() ? Fmt("%.1f%%", v.get<double>() * 100) : std::string("n/a");
}
std::string Num(const json& v, const char* f = "%.3f") {
  return v.is_number() ? Fmt(f, v.get<double>()) : std::string("n/a");
}

// The drift curve's point at `drift` (or null).
json AtDrift(const json& r, double drift) {
  for (const json& p : r["base_weight_matching"]["against_drift"]) {
    if (std::fabs(p["drift"].get<double>() - drift) < 1e-12) return p;
  }
  return nullptr;
}

struct Row {
  std::string attack, knowledge, result;
};

std::vector<Row> SummaryRows(const json& r) {
  std::vector<Row> rows;
  const json& dc = r["distance_correlation"];
  rows.push_back({"1 distance correlation (Fig. 6)", "- (statistic)",
                  "parameters per row: STIP " + Num(dc["parameters"]["mean_stip"]) +
                      ", random projection " + Num(dc["parameters"]["mean_random_projection"]) +
                      "; embeddings per vector " + Num(dc["embeddings"]["per_vector"]["stip"]) +
                      " (unrelated vector " +
                      Num(dc["embeddings"]["per_vector"]["unrelated_vector"]) +
                      "), across tokens " + Num(dc["embeddings"]["across_tokens"]["stip"])});
  const json& ks = r["key_space"];
  rows.push_back({"2 key space", "- (brute force)",
                  Fmt("%.0f", ks["total_bits"].get<double>()) + " bits (paper's (d!)^(3L): " +
                      Fmt("%.0f", ks["paper_bits_(d!)^(3L)"].get<double>()) + "); users hold " +
                      Fmt("%.0f", ks["client_share_bits"].get<double>())});
  const json& kp = r["known_plaintext"];
  std::string needed =
      kp["known_tokens_needed_for_full_p"].is_number()
          ? std::to_string(kp["known_tokens_needed_for_full_p"].get<int64_t>())
          : std::string("more than ") + std::to_string(kp["known_tokens"].get<int64_t>());
  rows.push_back({"3 known plaintext", "x' + one request's x",
                  "p " + Pct(kp["p_recovery_rate"]) + " (from " + needed +
                      " known tokens); other requests' tokens " +
                      Pct(kp["other_tokens_recovered"]) + "; p_c via tied head " +
                      Pct(kp["p_c_recovery_rate_via_tied_head"]) + ", via decoding " +
                      std::to_string(kp["p_c_entries_via_decoding"].get<int64_t>()) + " entries"});
  const json& vm = r["vocabulary_matching"];
  rows.push_back({"4 vocabulary matching", "x' + embedding table (client bundle)",
                  "prompt tokens " + Pct(vm["prompt_token_recovery_rate"]) + ", generated tokens " +
                      Pct(vm["generated_token_recovery_rate"]) + " (chance " +
                      Fmt("%.3f%%", vm["chance_rate"].get<double>() * 100) + ")"});
  json d1 = AtDrift(r, 0.01);
  std::string base = d1.is_null() ? std::string("n/a")
                                  : "at 1% drift: p " + Pct(d1["p_recovery_rate"]) + ", p_c " +
                                        Pct(d1["p_c_recovery_rate"]);
  const json& given = r["base_weight_matching"]["given_base"];
  if (!given.is_null()) {
    base += "; given base: p " + Pct(given["p_recovery_rate"]) + ", p_c " +
            Pct(given["p_c_recovery_rate"]);
  }
  rows.push_back({"5 base-weight matching", "server checkpoint + public base weights", base});
  const json& cb = r["decoding_codebook"];
  rows.push_back({"6 decoding codebook", "x', o' + embedding table",
                  std::to_string(cb["p_c_entries_correct"].get<int64_t>()) + " p_c entries after " +
                      std::to_string(cb["generated_tokens_observed"].get<int64_t>()) +
                      " generated tokens; " + Pct(cb["share_read_straight_off_o_prime"]) +
                      " of tokens read straight off o'"});
  const json& kl = r["keyless_generation"];
  rows.push_back({"7 keyless generation (Table 4)", "server checkpoint + embedding table",
                  "token agreement " + Pct(kl["token_agreement"]) + " (chance " +
                      Fmt("%.3f%%", kl["chance_agreement"].get<double>() * 100) + ")"});
  return rows;
}

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '|') {
      out += "\\|";
    } else if (c == '\n') {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

std::string BaseName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}
std::string DirName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

// A gnuplot single-quoted string ('' stands for ').
std::string GpQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

bool FindOnPath(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    if (!dir.empty() && access((dir + "/" + name).c_str(), X_OK) == 0) return true;
  }
  return false;
}

// Runs gnuplot on `script`; returns "" or what went wrong.
std::string RunGnuplot(const std::string& script_path) {
  if (!FindOnPath("gnuplot")) {
    return "plots not drawn: gnuplot is not installed (Debian: apt-get install gnuplot-nox)";
  }
  pid_t pid = 0;
  std::string arg0 = "gnuplot";
  std::vector<char*> argv = {arg0.data(), const_cast<char*>(script_path.c_str()), nullptr};
  if (posix_spawnp(&pid, "gnuplot", nullptr, nullptr, argv.data(), environ) != 0) {
    return "plots not drawn: gnuplot could not be started";
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return "plots not drawn: gnuplot failed";
  return "";
}

std::string GnuplotScript(const json& r, const std::string& dcor_png,
                          const std::string& drift_png) {
  std::ostringstream s;
  s << "$dcor << EOD\n";
  for (const json& p : r["distance_correlation"]["hidden_size_sweep"]) {
    s << p["hidden_size"].get<int64_t>() << ' ' << p["per_vector_stip"].get<double>() << ' '
      << p["per_vector_random_projection"].get<double>() << ' '
      << p["per_vector_unrelated"].get<double>() << ' ' << p["across_tokens_stip"].get<double>()
      << ' ' << p["across_tokens_random_projection"].get<double>() << '\n';
  }
  s << "EOD\n$drift << EOD\n";
  for (const json& p : r["base_weight_matching"]["against_drift"]) {
    if (p["drift"].get<double>() <= 0) continue;  // log axis
    s << p["drift"].get<double>() << ' ' << p["p_recovery_rate"].get<double>() * 100 << ' '
      << (p["p_c_recovery_rate"].is_number() ? p["p_c_recovery_rate"].get<double>() * 100 : NAN)
      << '\n';
  }
  const std::string model = BaseName(r["model"].get<std::string>());
  s << "EOD\n"
    << "set terminal png size 760,460\n"
    << "set key outside right\nset grid\n"
    << "set output " << GpQuote(dcor_png) << "\n"
    << "set title 'Distance correlation vs hidden size (synthetic N(0,1) embeddings)'\n"
    << "set logscale x 2\nset xlabel 'hidden size d'\nset ylabel 'dCor'\nset yrange [0:1.05]\n"
    << "plot $dcor using 1:2 with linespoints title 'STIP, per vector',"
       " $dcor using 1:3 with linespoints title 'random proj., per vector',"
       " $dcor using 1:4 with linespoints dt 2 title 'unrelated vector',"
       " $dcor using 1:5 with linespoints title 'STIP, across tokens',"
       " $dcor using 1:6 with linespoints title 'random proj., across tokens'\n"
    << "unset logscale x\n"
    << "set output " << GpQuote(drift_png) << "\n"
    << "set title "
    << GpQuote("Base-weight matching on " + model + ": recovery vs fine-tuning drift") << "\n"
    << "set logscale x 10\nset xlabel 'drift ||dW|| / ||W||'\nset ylabel 'recovered (%)'\n"
    << "set yrange [0:105]\n"
    << "plot $drift using 1:2 with linespoints title 'p (hidden)',"
       " $drift using 1:3 with linespoints title 'p_c (vocabulary)'\n";
  return s.str();
}

}  // namespace

std::string AuditJson(const json& result) {
  return result.dump(2, ' ', false, json::error_handler_t::replace);
}

std::string AuditSummaryText(const json& r) {
  std::ostringstream s;
  s << "stip audit of " << r["model"].get<std::string>() << " (" << r["arch"].get<std::string>()
    << ")\n";
  for (const Row& row : SummaryRows(r)) {
    s << "  " << row.attack << "\n      attacker holds: " << row.knowledge
      << "\n      result: " << row.result << "\n";
  }
  return s.str();
}

std::string AuditMarkdown(const json& r, const std::string& dcor_plot,
                          const std::string& drift_plot, const std::string& plot_note) {
  std::ostringstream s;
  const json& c = r["config"];
  s << "# stip security audit: `" << r["model"].get<std::string>() << "`\n\n"
    << "Made by `stip-developer audit`. Model: " << r["arch"].get<std::string>()
    << ", d = " << c["hidden_size"] << ", vocabulary " << c["vocab_size"] << ", " << c["layers"]
    << " layers, " << c["heads"] << " heads / " << c["kv_heads"] << " KV heads"
    << (c["rope"].get<bool>() ? ", RoPE" : ", learned positions")
    << (c["tied_head"].get<bool>() ? ", tied head" : ", untied head")
    << ". Keys: " << r["keys"].get<std::string>() << " (never part of this report).\n\n"
    << "Server's view: " << r["server_view"]["how"].get<std::string>() << ". "
    << r["server_view"]["prompts"] << " prompts, " << r["server_view"]["prompt_tokens"]
    << " prompt tokens, " << r["server_view"]["generated_tokens"] << " generated tokens. Run time "
    << Fmt("%.1f s", r["seconds"].get<double>()) << ".\n\n"
    << "## Summary\n\n| attack | the attacker holds | result |\n|---|---|---|\n";
  for (const Row& row : SummaryRows(r)) {
    s << "| " << Escape(row.attack) << " | " << Escape(row.knowledge) << " | " << Escape(row.result)
      << " |\n";
  }

  // 1.
  const json& dc = r["distance_correlation"];
  s << "\n## 1. Distance correlation (the paper's Fig. 6)\n\n"
    << "Attacker: " << dc["attacker_knowledge"].get<std::string>() << ".\n\n"
    << "*Per vector* pairs the d entries of x with those of x' (the paper's reading); a "
       "permutation breaks the pairing, and the value is what dCor gives two unrelated vectors "
       "of d entries (column *unrelated*). *Across tokens* pairs the tokens: a permutation keeps "
       "every distance between tokens, so it is exactly 1 -- the structure attacks 3 to 6 use.\n\n"
    << "**Finding:** " << dc["finding"].get<std::string>() << "\n\n"
    << "Parameters (" << dc["parameters"]["pairing"].get<std::string>() << "; "
    << dc["parameters"]["tensors"].size() << " server tensors): STIP "
    << Num(dc["parameters"]["mean_stip"]) << ", random projection "
    << Num(dc["parameters"]["mean_random_projection"]) << ", unrelated row "
    << Num(dc["parameters"]["mean_unrelated_row"])
    << " (paper, GPT2-1.5b: STIP 0.062, random projection 0.76).\n\n"
    << "Embeddings of this model (d = " << dc["embeddings"]["hidden_size"] << ", "
    << dc["embeddings"]["tokens"] << " tokens): per vector STIP "
    << Num(dc["embeddings"]["per_vector"]["stip"]) << ", random projection "
    << Num(dc["embeddings"]["per_vector"]["random_projection"]) << ", unrelated vector "
    << Num(dc["embeddings"]["per_vector"]["unrelated_vector"]) << "; across tokens STIP "
    << Num(dc["embeddings"]["across_tokens"]["stip"]) << ", random projection "
    << Num(dc["embeddings"]["across_tokens"]["random_projection"]) << ".\n\n"
    << "| hidden size | STIP per vector | random proj. per vector | unrelated vector | STIP across "
       "tokens | random proj. across tokens |\n|---|---|---|---|---|---|\n";
  for (const json& p : dc["hidden_size_sweep"]) {
    s << "| " << p["hidden_size"] << " | " << Num(p["per_vector_stip"]) << " | "
      << Num(p["per_vector_random_projection"]) << " | " << Num(p["per_vector_unrelated"]) << " | "
      << Num(p["across_tokens_stip"]) << " | " << Num(p["across_tokens_random_projection"])
      << " |\n";
  }
  s << "\n(paper, per vector: STIP 0.14 at d = 128 down to 0.017 at d = 8192)\n\n";
  if (plot_note.empty()) {
    s << "![distance correlation against hidden size](" << dcor_plot << ")\n";
  } else {
    s << "*" << plot_note << "*\n";
  }

  // 2.
  const json& ks = r["key_space"];
  s << "\n## 2. Key space\n\nAttacker: " << ks["attacker_knowledge"].get<std::string>()
    << ".\n\n| component | held by | count | size | bits |\n|---|---|---|---|---|\n";
  for (const json& k : ks["components"]) {
    s << "| " << k["component"].get<std::string>() << " | " << k["held_by"].get<std::string>()
      << " | " << k["count"] << " | " << k["size"] << " | " << Num(k["bits"], "%.1f") << " |\n";
  }
  s << "| **total** | | | | **" << Num(ks["total_bits"], "%.0f") << "** |\n\n"
    << "The paper's (d!)^(3L): " << Num(ks["paper_bits_(d!)^(3L)"], "%.0f")
    << " bits. The components are independent, so these bits count only against a search for "
       "all of them at once; attacks 3 to 6 recover p and p_c directly.\n";

  // 3.
  const json& kp = r["known_plaintext"];
  s << "\n## 3. Known plaintext\n\nAttacker: " << kp["attacker_knowledge"].get<std::string>()
    << ".\n\n- p recovered: " << Pct(kp["p_recovery_rate"])
    << " (ambiguous columns: " << kp["ambiguous_columns"]
    << ")\n- known tokens needed for all of p: "
    << (kp["known_tokens_needed_for_full_p"].is_null()
            ? std::string("more than the known prompt")
            : std::to_string(kp["known_tokens_needed_for_full_p"].get<int64_t>()))
    << "\n- then every other x' of the instance (" << kp["other_x_prime_rows"]
    << " rows): hidden states recovered exactly "
    << Pct(kp["other_hidden_states_recovered_exactly"]) << ", tokens "
    << Pct(kp["other_tokens_recovered"])
    << "\n- p_c via the tied head: " << Pct(kp["p_c_recovery_rate_via_tied_head"]) << " ("
    << kp["p_c_via_tied_head_note"].get<std::string>()
    << ")\n- p_c via decoding: " << kp["p_c_entries_via_decoding"]
    << " entries\n\n| known tokens | p recovered | ambiguous |\n"
    << "|---|---|---|\n";
  for (const json& p : kp["recovery_by_known_tokens"]) {
    s << "| " << p["known_tokens"] << " | " << Pct(p["p_recovery_rate"]) << " | " << p["ambiguous"]
      << " |\n";
  }

  // 4.
  const json& vm = r["vocabulary_matching"];
  s << "\n## 4. Vocabulary matching\n\nAttacker: " << vm["attacker_knowledge"].get<std::string>()
    << ".\n\nSorting a row removes the permutation: sort(x') = sort(E[token]"
    << (c["rope"].get<bool>() ? "" : " + P[position]")
    << ").\n\n- prompt tokens recovered: " << vm["prompt_tokens_recovered"] << " / "
    << vm["prompt_tokens"] << " (" << Pct(vm["prompt_token_recovery_rate"])
    << ")\n- generated tokens fed back: " << vm["generated_tokens_recovered"] << " / "
    << vm["generated_tokens_fed_back"] << " (" << Pct(vm["generated_token_recovery_rate"]) << ")\n";

  // 5.
  const json& bw = r["base_weight_matching"];
  s << "\n## 5. Base-weight matching\n\nAttacker: " << bw["attacker_knowledge"].get<std::string>()
    << ".\n\nDrift: " << bw["drift_definition"].get<std::string>()
    << ".\n\n| drift | p recovered | p_c recovered |\n|---|---|---|\n";
  for (const json& p : bw["against_drift"]) {
    s << "| " << Fmt("%g", p["drift"].get<double>()) << " | " << Pct(p["p_recovery_rate"]) << " | "
      << Pct(p["p_c_recovery_rate"]) << " |\n";
  }
  if (!bw["given_base"].is_null()) {
    const json& g = bw["given_base"];
    s << "\nGiven base `" << g["base"].get<std::string>() << "` (mean relative drift "
      << Num(g["mean_relative_drift"]) << "): p " << Pct(g["p_recovery_rate"]) << ", p_c "
      << Pct(g["p_c_recovery_rate"]) << ".\n";
  }
  s << "\n";
  if (plot_note.empty()) {
    s << "![recovery against drift](" << drift_plot << ")\n";
  } else {
    s << "*" << plot_note << "*\n";
  }

  // 6.
  const json& cb = r["decoding_codebook"];
  s << "\n## 6. Decoding codebook\n\nAttacker: " << cb["attacker_knowledge"].get<std::string>()
    << ".\n\nAfter " << cb["generated_tokens_observed"] << " generated tokens the observer knows "
    << cb["p_c_entries_correct"] << " entries of p_c (" << Pct(cb["p_c_fraction_recovered"])
    << " of the vocabulary; entries right: " << Pct(cb["entry_accuracy"]) << "); "
    << Pct(cb["share_read_straight_off_o_prime"])
    << " of the generated tokens used an index already in the codebook, i.e. could be read "
       "straight off o'.\n\n| generated tokens | p_c entries known |\n|---|---|\n";
  for (const json& p : cb["curve"]) {
    s << "| " << p["tokens"] << " | " << p["p_c_entries"] << " |\n";
  }

  // 7.
  const json& kl = r["keyless_generation"];
  s << "\n## 7. Keyless generation (the paper's Table 4)\n\nAttacker: "
    << kl["attacker_knowledge"].get<std::string>() << ".\n\nToken agreement with the keyed "
    << "generation: " << kl["agreeing_positions"] << " / " << kl["generated_positions"] << " ("
    << Pct(kl["token_agreement"]) << "; chance "
    << Fmt("%.3f%%", kl["chance_agreement"].get<double>() * 100) << ").\n";
  if (kl.contains("example")) {
    const json& e = kl["example"];
    s << "\n| prompt | with keys | without keys |\n|---|---|---|\n| "
      << Escape(e["prompt"].get<std::string>()) << " | "
      << Escape(e["with_keys"].get<std::string>()) << " | "
      << Escape(e["without_keys"].get<std::string>()) << " |\n";
  }
  return s.str();
}

AuditReportFiles WriteAuditReport(const json& result, const std::string& md_path) {
  AuditReportFiles files;
  files.markdown = md_path;
  std::string stem = BaseName(md_path);
  if (stem.size() > 3 && stem.compare(stem.size() - 3, 3, ".md") == 0) {
    stem.resize(stem.size() - 3);
  }
  const std::string dir = DirName(md_path);
  const std::string dcor = stem + "-distance-correlation.png";
  const std::string drift = stem + "-drift.png";
  const std::string script = JoinPath(dir, "." + stem + ".gp");
  WriteFileAtomic(script, GnuplotScript(result, JoinPath(dir, dcor), JoinPath(dir, drift)));
  files.plot_note = RunGnuplot(script);
  std::remove(script.c_str());
  if (files.plot_note.empty()) files.plots = {JoinPath(dir, dcor), JoinPath(dir, drift)};
  WriteFileAtomic(md_path, AuditMarkdown(result, dcor, drift, files.plot_note));
  return files;
}

}  // namespace stip
