// The page `fedmoe-client model explain` writes: one self-contained HTML file that a browser
// opens from disk with no network at all (its Content-Security-Policy forbids every fetch).
//
// What the page shows, from a model::Explanation:
// - the next-token prediction: the most likely tokens and the one explained;
// - the attribution of each input token (model/explain.h), coloured over the text, with the
//   tokens that drove it most listed;
// - each token's routed experts and weights in every layer, as a table;
// - an attention heat map for one layer and head, chosen with two selectors (or the page's
//   address: report.html#layer=2&head=1&query=7), and the keys the chosen query attends to most.
//
// The parts that do not change with a selection are written as plain HTML, readable without
// scripts; the heat map is drawn by the page's own script from the attention data embedded in
// it, one byte per probability (round(p·255)), which keeps a page of L layers, H heads and T
// tokens near 4/3·L·H·T² bytes.
#ifndef FEDMOE_CLIENT_EXPLAIN_REPORT_H_
#define FEDMOE_CLIENT_EXPLAIN_REPORT_H_

#include <string>
#include <vector>

#include "model/explain.h"

namespace fedmoe::client {

struct ExplainReportInput {
  const model::Explanation* explanation = nullptr;
  // Printable text of each token (model::TokenLabels), and of each top_next token.
  std::vector<std::string> token_labels;
  std::vector<std::string> next_labels;
  std::string target_label;
  // What was explained, for the page's header: the model directory, the adapter directory (may
  // be empty) and the weight format the model was held in.
  std::string model;
  std::string adapter;
  std::string weight_format;
};

// The page. Every text from outside (labels, paths) is escaped for HTML, and the embedded data
// cannot close its script element.
std::string RenderExplainReport(const ExplainReportInput& input);

}  // namespace fedmoe::client

#endif  // FEDMOE_CLIENT_EXPLAIN_REPORT_H_
