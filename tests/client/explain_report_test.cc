// The explain page as text: what it says is the explanation's, nothing from outside can break
// out of its markup or its data, and it asks for nothing over a network. The page as a browser
// renders it is tests/integration/explain_test.cc.
#include "client/explain_report.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <regex>
#include <string>

#include "absl/strings/escaping.h"

namespace fedmoe::client {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

constexpr char kHostile[] = "</script><script>alert(1)</script>";

model::Explanation SmallExplanation() {
  model::Explanation e;
  e.layers = 2;
  e.heads = 2;
  e.experts = 4;
  e.top_k = 2;
  e.tokens = {10, 11, 12};
  // Layer-major, then token, then the token's k experts.
  e.expert_index = {0, 1, 2, 3, 1, 0, /*layer 1*/ 3, 2, 1, 0, 0, 3};
  e.expert_weight = {0.6f, 0.4f, 0.7f, 0.3f, 0.5f, 0.5f, 0.9f, 0.1f, 0.8f, 0.2f, 0.55f, 0.45f};
  for (int64_t map = 0; map < e.layers * e.heads; ++map) {
    const float spread = 0.1f * static_cast<float>(map + 1);
    e.attention.insert(e.attention.end(),
                       {1, 0, 0, 1 - spread, spread, 0, 0.5f - spread, 0.5f, spread});
  }
  e.target = 7;
  e.target_probability = 0.25;
  e.attribution = {0.5f, -1.0f, 0.0f};
  e.top_next = {{7, 0.25}, {2, 0.125}};
  return e;
}

struct Page {
  model::Explanation explanation = SmallExplanation();
  std::string html;
  Page() {
    html = RenderExplainReport({.explanation = &explanation,
                                .token_labels = {"a&b", kHostile, "\u21b5"},
                                .next_labels = {"x", "<y>"},
                                .target_label = "x",
                                .model = "/models/v3 <site>",
                                .adapter = "",
                                .weight_format = "int8"});
  }
};

TEST(ExplainReportTest, NothingFromOutsideBreaksOutOfTheMarkupOrTheData) {
  Page page;
  // The hostile label appears only escaped, once per place a label is shown.
  EXPECT_THAT(page.html, Not(HasSubstr("<script>alert")));
  EXPECT_THAT(page.html, HasSubstr("&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;"));
  EXPECT_THAT(page.html, HasSubstr("a&amp;b"));
  EXPECT_THAT(page.html, HasSubstr("/models/v3 &lt;site&gt;"));
  EXPECT_THAT(page.html, HasSubstr("&lt;y&gt;"));
  // Two script elements: the data and the page's own script, nothing more.
  const std::regex script_open("<script");
  EXPECT_EQ(std::distance(std::sregex_iterator(page.html.begin(), page.html.end(), script_open),
                          std::sregex_iterator()),
            2);
}

TEST(ExplainReportTest, TheEmbeddedDataIsTheExplanationsAttentionOneBytePerProbability) {
  Page page;
  const std::string open = "<script id=\"attention-data\" type=\"application/json\">";
  const size_t begin = page.html.find(open);
  ASSERT_NE(begin, std::string::npos);
  const size_t end = page.html.find("</script>", begin);
  const nlohmann::json data =
      nlohmann::json::parse(page.html.substr(begin + open.size(), end - begin - open.size()));
  EXPECT_EQ(data["length"], 3);
  EXPECT_EQ(data["layers"], 2);
  EXPECT_EQ(data["heads"], 2);
  EXPECT_EQ(data["labels"][1], kHostile);
  ASSERT_EQ(data["attention"].size(), 4U);
  for (size_t map = 0; map < 4; ++map) {
    std::string bytes;
    ASSERT_TRUE(absl::Base64Unescape(data["attention"][map].get<std::string>(), &bytes));
    ASSERT_EQ(bytes.size(), 9U);
    for (size_t i = 0; i < 9; ++i) {
      EXPECT_NEAR(static_cast<unsigned char>(bytes[i]) / 255.0,
                  page.explanation.attention[map * 9 + i], 0.5 / 255 + 1e-6)
          << "map " << map << " cell " << i;
    }
  }
}

TEST(ExplainReportTest, ItAsksForNothingOverANetwork) {
  Page page;
  EXPECT_THAT(page.html, HasSubstr("Content-Security-Policy\" content=\"default-src 'none';"));
  for (const char* fetch : {"http:", "https:", " src=", "@import", "url(", "//cdn"}) {
    EXPECT_THAT(page.html, Not(HasSubstr(fetch))) << fetch;
  }
}

TEST(ExplainReportTest, ShowsTheAttributionRoutingAndPrediction) {
  Page page;
  // Positive red, negative blue, zero uncoloured; the strongest (−1) is listed first.
  EXPECT_THAT(page.html, HasSubstr("data-index=\"0\" data-attribution=\"0.5\" "
                                   "style=\"background:rgba(214,48,39,0.490)\""));
  EXPECT_THAT(page.html, HasSubstr("data-index=\"1\" data-attribution=\"-1\" "
                                   "style=\"background:rgba(33,102,172,0.900)\""));
  EXPECT_THAT(page.html, HasSubstr("data-index=\"2\" data-attribution=\"0\" "
                                   "style=\"background:transparent\""));
  EXPECT_THAT(page.html, HasSubstr("<ol id=\"top-attributions\"><li data-index=\"1\">"));
  EXPECT_THAT(page.html, HasSubstr("<td class=\"route\" data-layer=\"1\" data-experts=\"1,0\" "
                                   "data-weights=\"0.800,0.200\""));
  // Layer 0 sends token slots to experts 0,1,2,3,1,0: two to e0 and e1, one to e2 and e3.
  EXPECT_THAT(page.html,
              HasSubstr("<tr data-layer=\"0\"><th>layer 0</th><td>2</td><td>2</td><td>1</td>"
                        "<td>1</td></tr>"));
  EXPECT_THAT(page.html, HasSubstr("<span id=\"target-p\">0.2500</span>"));
  EXPECT_THAT(page.html, HasSubstr("weights held as int8; 3 tokens, 2 layers"));
}

}  // namespace
}  // namespace fedmoe::client
