#include "client/explain_report.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace fedmoe::client {
namespace {

std::string Escape(std::string_view text) {
  std::string escaped;
  escaped.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&':
        escaped += "&amp;";
        break;
      case '<':
        escaped += "&lt;";
        break;
      case '>':
        escaped += "&gt;";
        break;
      case '"':
        escaped += "&quot;";
        break;
      case '\'':
        escaped += "&#39;";
        break;
      default:
        escaped += c;
    }
  }
  return escaped;
}

std::string Fixed(double value, int digits = 4) { return absl::StrFormat("%.*f", digits, value); }

// A token's text in the page: a span that keeps its spaces visible.
std::string TokenSpan(std::string_view label) {
  return absl::StrCat("<span class=\"tok\">", Escape(label), "</span>");
}

// Red where the token raises the explained prediction, blue where it lowers it, as strong as
// its share of the largest attribution's magnitude.
std::string AttributionColour(double attribution, double largest) {
  if (largest <= 0 || attribution == 0) return "transparent";
  const double strength = 0.08 + 0.82 * std::min(1.0, std::abs(attribution) / largest);
  return attribution > 0 ? absl::StrFormat("rgba(214,48,39,%.3f)", strength)
                         : absl::StrFormat("rgba(33,102,172,%.3f)", strength);
}

// One hue per expert, so that the routing table shows at a glance where tokens go.
std::string ExpertColour(int64_t expert, int64_t experts) {
  return absl::StrFormat("hsl(%d,65%%,86%%)",
                         static_cast<int>(360 * expert / std::max<int64_t>(experts, 1)));
}

constexpr char kStyle[] = R"(
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; padding: 0 1em;
       color: #1b1b1b; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.meta, .note { color: #555; }
.tok { white-space: pre; font-family: ui-monospace, monospace; }
#attributed-text { line-height: 2.2; font-size: 1.05em; }
#attributed-text .tok { padding: 2px 1px; border-radius: 3px; }
table { border-collapse: collapse; font-size: 0.92em; }
td, th { border: 1px solid #e2e2e2; padding: 2px 6px; text-align: left; vertical-align: top; }
.scroll { overflow-x: auto; max-height: 36em; overflow-y: auto; }
#routing-table td.route { white-space: nowrap; }
#heatmap { border: 1px solid #ccc; image-rendering: pixelated; cursor: crosshair; }
.controls label { margin-right: 1.2em; }
.legend span { padding: 1px 8px; margin-right: 0.6em; border-radius: 3px; }
)";

// The heat map: decodes one layer and head's probabilities when first shown, draws the causal
// triangle, outlines the chosen query's row, and lists the keys that row attends to most.
constexpr char kScript[] = R"(
(function () {
  'use strict';
  const data = JSON.parse(document.getElementById('attention-data').textContent);
  const n = data.length;
  const decoded = new Map();
  function probabilities(layer, head) {
    const key = layer * data.heads + head;
    if (!decoded.has(key)) {
      const raw = atob(data.attention[key]);
      const bytes = new Uint8Array(raw.length);
      for (let i = 0; i < raw.length; ++i) bytes[i] = raw.charCodeAt(i);
      decoded.set(key, bytes);
    }
    return decoded.get(key);
  }
  const layerSelect = document.getElementById('layer');
  const headSelect = document.getElementById('head');
  const querySelect = document.getElementById('query');
  function fill(select, count, text) {
    for (let i = 0; i < count; ++i) {
      const option = document.createElement('option');
      option.value = String(i);
      option.textContent = text(i);
      select.appendChild(option);
    }
  }
  fill(layerSelect, data.layers, (i) => 'layer ' + i);
  fill(headSelect, data.heads, (i) => 'head ' + i);
  fill(querySelect, n, (i) => i + ': ' + data.labels[i]);
  const asked = new URLSearchParams(location.hash.slice(1));
  function choose(select, name, fallback, count) {
    const value = Number(asked.get(name));
    select.value = String(asked.has(name) && Number.isInteger(value) && value >= 0 &&
                          value < count ? value : fallback);
  }
  choose(layerSelect, 'layer', 0, data.layers);
  choose(headSelect, 'head', 0, data.heads);
  choose(querySelect, 'query', n - 1, n);

  const canvas = document.getElementById('heatmap');
  const cell = Math.max(2, Math.min(24, Math.floor(720 / n)));
  canvas.width = canvas.height = cell * n;
  const caption = document.getElementById('heatmap-caption');
  const attended = document.getElementById('attended');
  function quantized(byte) { return (byte / 255).toFixed(3); }

  function draw() {
    const layer = Number(layerSelect.value);
    const head = Number(headSelect.value);
    const query = Number(querySelect.value);
    const p = probabilities(layer, head);
    const context = canvas.getContext('2d');
    context.fillStyle = '#ffffff';
    context.fillRect(0, 0, canvas.width, canvas.height);
    for (let q = 0; q < n; ++q) {
      for (let k = 0; k <= q; ++k) {
        const byte = p[q * n + k];
        if (byte === 0) continue;
        // The square root keeps a head that spreads its attention thinly visible.
        context.fillStyle = 'rgba(84,39,143,' + Math.sqrt(byte / 255) + ')';
        context.fillRect(k * cell, q * cell, cell, cell);
      }
    }
    context.strokeStyle = '#e66101';
    context.lineWidth = Math.max(1, Math.min(3, cell / 4));
    context.strokeRect(0, query * cell, (query + 1) * cell, cell);
    canvas.dataset.layer = String(layer);
    canvas.dataset.head = String(head);
    canvas.dataset.query = String(query);
    caption.textContent = 'Layer ' + layer + ', head ' + head + '. Row q is how token q ' +
        'spreads its attention over the tokens up to itself; the outlined row is token ' + query +
        ' (' + data.labels[query] + ').';
    const row = [];
    for (let k = 0; k <= query; ++k) row.push([p[query * n + k], k]);
    row.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    attended.replaceChildren(...row.slice(0, 5).map(([byte, k]) => {
      const item = document.createElement('li');
      item.dataset.key = String(k);
      item.dataset.probability = quantized(byte);
      const token = document.createElement('span');
      token.className = 'tok';
      token.textContent = data.labels[k];
      item.append('token ' + k + ' ', token, ': ' + quantized(byte));
      return item;
    }));
  }
  function cellAt(event) {
    const box = canvas.getBoundingClientRect();
    const scale = canvas.width / box.width;
    return [Math.floor((event.clientY - box.top) * scale / cell),
            Math.floor((event.clientX - box.left) * scale / cell)];
  }
  canvas.addEventListener('click', (event) => {
    const [q] = cellAt(event);
    if (q >= 0 && q < n) { querySelect.value = String(q); draw(); }
  });
  canvas.addEventListener('mousemove', (event) => {
    const [q, k] = cellAt(event);
    if (q < 0 || q >= n || k < 0 || k > q) { canvas.title = ''; return; }
    const p = probabilities(Number(layerSelect.value), Number(headSelect.value));
    canvas.title = 'query ' + q + ' (' + data.labels[q] + ') \u2192 key ' + k + ' (' +
        data.labels[k] + '): ' + quantized(p[q * n + k]);
  });
  for (const select of [layerSelect, headSelect, querySelect]) {
    select.addEventListener('change', draw);
  }
  draw();
  document.body.dataset.ready = 'true';
})();
)";

void AppendPrediction(const ExplainReportInput& input, std::string& page) {
  const model::Explanation& e = *input.explanation;
  absl::StrAppend(&page, "<section id=\"prediction\"><h2>Next-token prediction</h2>\n",
                  "<p>Explained: <span id=\"target\" data-token=\"", e.target, "\">",
                  TokenSpan(input.target_label), "</span>, with probability <span id=\"target-p\">",
                  Fixed(e.target_probability), "</span> after the text.</p>\n",
                  "<table id=\"top-next\"><tr><th>next token</th><th>id</th>",
                  "<th>probability</th></tr>\n");
  for (size_t i = 0; i < e.top_next.size(); ++i) {
    absl::StrAppend(&page, "<tr data-token=\"", e.top_next[i].token, "\"><td>",
                    TokenSpan(input.next_labels[i]), "</td><td>", e.top_next[i].token, "</td><td>",
                    Fixed(e.top_next[i].probability), "</td></tr>\n");
  }
  absl::StrAppend(&page, "</table></section>\n");
}

void AppendAttribution(const ExplainReportInput& input, std::string& page) {
  const model::Explanation& e = *input.explanation;
  double largest = 0;
  for (const float a : e.attribution) largest = std::max(largest, std::abs(double{a}));
  absl::StrAppend(
      &page, "<section id=\"attribution\"><h2>Which tokens drove the prediction</h2>\n",
      "<p class=\"note\">Gradient × input on the embeddings: for each token, the sum over ",
      "its embedding of value × the gradient of log p(explained token). It is how fast ",
      "that log-probability rises as the token's embedding is scaled up.</p>\n",
      "<p class=\"legend\"><span style=\"background:rgba(214,48,39,0.6)\">raises it</span>",
      "<span style=\"background:rgba(33,102,172,0.6)\">lowers it</span> strength: share of ",
      "the largest, ", Fixed(largest), "</p>\n<div id=\"attributed-text\">");
  for (size_t t = 0; t < e.tokens.size(); ++t) {
    const double a = e.attribution[t];
    absl::StrAppend(&page, "<span class=\"tok\" data-index=\"", t, "\" data-attribution=\"",
                    absl::StrFormat("%.6g", a),
                    "\" style=\"background:", AttributionColour(a, largest), "\" title=\"token ", t,
                    ": ", Fixed(a), "\">", Escape(input.token_labels[t]), "</span>");
  }
  absl::StrAppend(&page, "</div>\n<p>The tokens that weigh most:</p><ol id=\"top-attributions\">");
  for (const size_t t : e.StrongestAttributions(5)) {
    absl::StrAppend(&page, "<li data-index=\"", t, "\">token ", t, " ",
                    TokenSpan(input.token_labels[t]), ": ", Fixed(e.attribution[t]), "</li>");
  }
  absl::StrAppend(&page, "</ol></section>\n");
}

void AppendRouting(const ExplainReportInput& input, std::string& page) {
  const model::Explanation& e = *input.explanation;
  const int64_t length = static_cast<int64_t>(e.tokens.size());
  absl::StrAppend(&page, "<section id=\"routing\"><h2>Expert routing</h2>\n",
                  "<p class=\"note\">Each token's ", e.top_k, " experts of ", e.experts,
                  " in every layer, with the router's renormalised weights; a cell takes the ",
                  "colour of its first expert.</p>\n<div class=\"scroll\"><table ",
                  "id=\"routing-table\"><thead><tr><th>#</th><th>token</th>");
  for (int64_t layer = 0; layer < e.layers; ++layer) {
    absl::StrAppend(&page, "<th>layer ", layer, "</th>");
  }
  absl::StrAppend(&page, "</tr></thead><tbody>\n");
  std::vector<int64_t> load(static_cast<size_t>(e.layers * e.experts), 0);
  for (int64_t t = 0; t < length; ++t) {
    absl::StrAppend(&page, "<tr data-index=\"", t, "\"><td>", t, "</td><td>",
                    TokenSpan(input.token_labels[static_cast<size_t>(t)]), "</td>");
    for (int64_t layer = 0; layer < e.layers; ++layer) {
      const size_t first = static_cast<size_t>((layer * length + t) * e.top_k);
      std::string experts, weights, text;
      for (int64_t j = 0; j < e.top_k; ++j) {
        const int32_t expert = e.expert_index[first + static_cast<size_t>(j)];
        const float weight = e.expert_weight[first + static_cast<size_t>(j)];
        ++load[static_cast<size_t>(layer * e.experts + expert)];
        absl::StrAppend(&experts, j ? "," : "", expert);
        absl::StrAppend(&weights, j ? "," : "", Fixed(weight, 3));
        absl::StrAppend(&text, j ? " · " : "", "e", expert, " ", Fixed(weight, 2));
      }
      absl::StrAppend(&page, "<td class=\"route\" data-layer=\"", layer, "\" data-experts=\"",
                      experts, "\" data-weights=\"", weights,
                      "\" style=\"background:", ExpertColour(e.expert_index[first], e.experts),
                      "\">", text, "</td>");
    }
    absl::StrAppend(&page, "</tr>\n");
  }
  absl::StrAppend(&page, "</tbody></table></div>\n<p>Tokens routed to each expert:</p>",
                  "<div class=\"scroll\"><table id=\"expert-load\"><tr><th></th>");
  for (int64_t expert = 0; expert < e.experts; ++expert) {
    absl::StrAppend(&page, "<th>e", expert, "</th>");
  }
  absl::StrAppend(&page, "</tr>");
  for (int64_t layer = 0; layer < e.layers; ++layer) {
    absl::StrAppend(&page, "<tr data-layer=\"", layer, "\"><th>layer ", layer, "</th>");
    for (int64_t expert = 0; expert < e.experts; ++expert) {
      absl::StrAppend(&page, "<td>", load[static_cast<size_t>(layer * e.experts + expert)],
                      "</td>");
    }
    absl::StrAppend(&page, "</tr>");
  }
  absl::StrAppend(&page, "</table></div></section>\n");
}

// The attention data for the script: JSON inside a script element, with every '<' written as
// \u003c so that no label can end the element early.
std::string AttentionData(const ExplainReportInput& input) {
  const model::Explanation& e = *input.explanation;
  const size_t square = e.tokens.size() * e.tokens.size();
  nlohmann::json data = {{"length", e.tokens.size()},
                         {"layers", e.layers},
                         {"heads", e.heads},
                         {"labels", input.token_labels}};
  nlohmann::json maps = nlohmann::json::array();
  std::string bytes(square, '\0');
  for (int64_t map = 0; map < e.layers * e.heads; ++map) {
    for (size_t i = 0; i < square; ++i) {
      const float p = e.attention[static_cast<size_t>(map) * square + i];
      bytes[i] =
          static_cast<char>(static_cast<uint8_t>(std::lround(std::clamp(p, 0.0f, 1.0f) * 255.0f)));
    }
    maps.push_back(absl::Base64Escape(bytes));
  }
  data["attention"] = std::move(maps);
  const std::string json = data.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  std::string safe;
  safe.reserve(json.size());
  for (const char c : json) {
    if (c == '<') {
      safe += "\\u003c";
    } else {
      safe += c;
    }
  }
  return safe;
}

}  // namespace

std::string RenderExplainReport(const ExplainReportInput& input) {
  const model::Explanation& e = *input.explanation;
  std::string page;
  absl::StrAppend(&page, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n",
                  "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; ",
                  "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">\n",
                  "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n",
                  "<title>fedmoe explain: ", e.tokens.size(), " tokens</title>\n<style>", kStyle,
                  "</style></head>\n<body>\n<h1>What the model did with this text</h1>\n",
                  "<p class=\"meta\" id=\"meta\">Model <code>", Escape(input.model), "</code>",
                  input.adapter.empty()
                      ? ""
                      : absl::StrCat(" with adapter <code>", Escape(input.adapter), "</code>"),
                  ", weights held as ", Escape(input.weight_format), "; ", e.tokens.size(),
                  " tokens, ", e.layers, " layers, ", e.heads, " attention heads, ", e.experts,
                  " experts with ", e.top_k, " per token.</p>\n");
  AppendPrediction(input, page);
  AppendAttribution(input, page);
  AppendRouting(input, page);
  absl::StrAppend(&page, "<section id=\"attention\"><h2>Attention</h2>\n<p class=\"controls\">",
                  "<label>Layer <select id=\"layer\"></select></label>",
                  "<label>Head <select id=\"head\"></select></label>",
                  "<label>Query <select id=\"query\"></select></label></p>\n",
                  "<canvas id=\"heatmap\"></canvas>\n<p id=\"heatmap-caption\"></p>\n",
                  "<p>What the outlined token attends to most:</p><ol id=\"attended\"></ol>\n",
                  "<noscript><p>The heat map needs scripts; everything above does not.</p>",
                  "</noscript></section>\n<script id=\"attention-data\" ",
                  "type=\"application/json\">", AttentionData(input), "</script>\n<script>",
                  kScript, "</script>\n</body></html>\n");
  return page;
}

}  // namespace fedmoe::client
