// Renders an audit result (audit.h) as Markdown: a short table of the seven
// attacks with the attacker knowledge each assumes, the details, and two
// plots drawn by gnuplot (distance correlation against hidden size, base-
// weight recovery against drift) as PNG files beside the report. Without
// gnuplot the report says so and is written all the same.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace stip {

struct AuditReportFiles {
  std::string markdown;
  std::vector<std::string> plots;  // written
  std::string plot_note;           // why plots are missing, if they are
};

// Writes `md_path` (and `<stem>-distance-correlation.png`, `<stem>-drift.png`
// in its directory).
AuditReportFiles WriteAuditReport(const nlohmann::ordered_json& result, const std::string& md_path);

// The Markdown text alone (plots referenced by file name, `plot_note` shown
// in their place when non-empty).
std::string AuditMarkdown(const nlohmann::ordered_json& result, const std::string& dcor_plot,
                          const std::string& drift_plot, const std::string& plot_note);

// The summary table as plain text (the command's output without --json).
std::string AuditSummaryText(const nlohmann::ordered_json& result);

// JSON text of a result (invalid UTF-8 in generated text replaced).
std::string AuditJson(const nlohmann::ordered_json& result);

}  // namespace stip
