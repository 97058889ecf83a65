// Internal to privacy: arithmetic on logarithms, so that the accountants can sum terms of
// e^700 and e^-700 alike without overflow.
#ifndef FEDMOE_PRIVACY_LOG_SPACE_H_
#define FEDMOE_PRIVACY_LOG_SPACE_H_

#include <algorithm>
#include <cmath>
#include <limits>

namespace fedmoe::privacy {

// log(e^a + e^b), exact for -∞ arguments.
inline double LogAdd(double a, double b) {
  constexpr double kMinusInfinity = -std::numeric_limits<double>::infinity();
  if (a == kMinusInfinity) return b;
  if (b == kMinusInfinity) return a;
  return std::max(a, b) + std::log1p(std::exp(-std::abs(a - b)));
}

// log(e^a - e^b) for a ≥ b; -∞ when b ≥ a.
inline double LogSub(double a, double b) {
  constexpr double kMinusInfinity = -std::numeric_limits<double>::infinity();
  if (b == kMinusInfinity) return a;
  if (b >= a) return kMinusInfinity;
  return a + std::log1p(-std::exp(b - a));
}

// log C(n, k).
inline double LogBinomial(double n, double k) {
  return std::lgamma(n + 1.0) - std::lgamma(k + 1.0) - std::lgamma(n - k + 1.0);
}

}  // namespace fedmoe::privacy

#endif  // FEDMOE_PRIVACY_LOG_SPACE_H_
