// Hex strings of published test vectors, as bytes.
#ifndef FEDMOE_TESTS_TESTING_HEX_H_
#define FEDMOE_TESTS_TESTING_HEX_H_

#include <string>
#include <string_view>

namespace fedmoe::testing {

inline std::string FromHex(std::string_view hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

}  // namespace fedmoe::testing

#endif  // FEDMOE_TESTS_TESTING_HEX_H_
