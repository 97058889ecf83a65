// What one client's SecAgg+ masking costs, shared by the benchmarks that report it: a self mask
// and `neighbors` pairwise masks from secure_agg's MaskGenerator, added into the vector.
#ifndef FEDMOE_BENCH_CLIENT_MASKING_H_
#define FEDMOE_BENCH_CLIENT_MASKING_H_

#include <cstdint>
#include <string>
#include <vector>

#include "secure_agg/shared/mask_generator.h"

namespace fedmoe::bench {

inline void MaskAsOneClient(std::vector<uint64_t>& vector, uint32_t neighbors, int bits) {
  const std::string seed(32, 's');
  secure_agg::MaskDomain domain{std::string(32, 'i'), 1,   secure_agg::MaskPurpose::kSelfMask, 1, 0,
                                vector.size(),        bits};
  (void)secure_agg::MaskGenerator::Create(seed, domain)->Add(vector);
  domain.purpose = secure_agg::MaskPurpose::kPairwiseMask;
  for (uint32_t peer = 2; peer < neighbors + 2; ++peer) {
    domain.second_participant = peer;
    (void)secure_agg::MaskGenerator::Create(seed, domain)->Add(vector);
  }
}

}  // namespace fedmoe::bench

#endif  // FEDMOE_BENCH_CLIENT_MASKING_H_
