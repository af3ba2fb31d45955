// The keep pass's kernel and launcher (keep.cuh).
#include <algorithm>

#include "cuda/slicing/keep.cuh"

namespace dv365::cuda::slicing {
namespace {

constexpr int kKeepThreads = 256;
constexpr int kCatValues = prog::kMaxCatValue + 1;  // 64

// What the keep pass holds per block in shared memory: for each packed field f (< Keep::fields) the groups that
// read it (reads[f]) and, in the tables, per value v the groups whose filters on f all accept v (every group
// that does not read f); the groups with float filters or a weight (flt), those reading a field beyond the
// packed ones (full: evaluated by group_keep), and the weighted ones.
struct BlockKeep {
  int64_t first;  // the block's first group
  uint32_t flt, full, weighted, fields;  // fields: the packed fields some group of the block reads
  uint32_t reads[kPackedCats];
};


size_t keep_smem_bytes(const Keep& kp) {
  return sizeof(GroupProg) * kp.groups + sizeof(BlockKeep) * kp.blocks + sizeof(int) * kp.groups +
         sizeof(uint32_t) * kp.blocks + sizeof(uint32_t) * kp.blocks * kp.fields * kCatValues;
}

// One CTA per work item (grid-stride), a thread per event: every active group of every block on the event, with
// the event's fields read once (see Keep). The categorical filters of a block's groups are one table lookup per
// packed field the block reads (an AND of masks); the float filters and weights are evaluated per group, with
// the event's dur ** beta and log1p terms cached across groups (Event). Groups, tables and per-block facts are
// built in shared memory first; each item's active groups per block are found with a thread per slice.
__global__ void __launch_bounds__(kKeepThreads) keep_kernel(Timeline tl, Program p, int64_t t_count,
                                                            const int64_t* plan_raw, const int64_t* __restrict__ items,
                                                            int64_t items_cap, Keep kp, int32_t* flag) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const PlanView v(const_cast<int64_t*>(plan_raw), p.s, t_count);
  if (!keep_ready(kp, v, tl)) return;  // the pooling kernels evaluate the predicates
  const int64_t groups = v.hdr[kNumGroups], blocks = v.hdr[kNumBlocks], k = v.hdr[kNumBounds];
  const int nf = static_cast<int>(kp.fields);
  GroupProg* group = reinterpret_cast<GroupProg*>(smem_raw);            // [kp.groups]
  BlockKeep* bk = reinterpret_cast<BlockKeep*>(group + kp.groups);      // [kp.blocks]
  int* wsl = reinterpret_cast<int*>(bk + kp.blocks);                    // [kp.groups]
  uint32_t* active = reinterpret_cast<uint32_t*>(wsl + kp.groups);      // [kp.blocks]
  uint32_t* table = active + kp.blocks;                                 // [kp.blocks][nf][kCatValues]
  for (int64_t g = threadIdx.x; g < groups; g += blockDim.x) {
    group[g] = load_group(p, v.group_leader[g]);
    wsl[g] = static_cast<int>(v.wslot[g]);
  }
  __syncthreads();
  for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) {
    BlockKeep kb{};
    kb.first = v.block_first[b];
    const int count = static_cast<int>(v.block_count[b]);
    for (int g = 0; g < count; ++g) {
      const GroupProg& gp = group[kb.first + g];
      const uint32_t bit = 1u << g;
      if (gp.flags & prog::kAllFlags) kb.flt |= bit;
      if (gp.flags & prog::kWeighted) kb.weighted |= bit;
      for (int j = 0; j < prog::kNumCatFilters; ++j) {
        const int64_t f = gp.field[j];
        if (f < 0) continue;
        if (f < nf) {
          kb.reads[f] |= bit;
          kb.fields |= 1u << f;
        } else {
          kb.full |= bit;  // beyond the packed fields, or no categorical fields at all: group_keep decides
        }
      }
    }
    bk[b] = kb;
  }
  for (int64_t i = threadIdx.x; i < blocks * nf * kCatValues; i += blockDim.x) {
    const int64_t b = i / (nf * kCatValues);
    const int f = static_cast<int>(i / kCatValues % nf), val = static_cast<int>(i % kCatValues);
    const int64_t first = v.block_first[b];
    const int count = static_cast<int>(v.block_count[b]);
    uint32_t bits = 0;
    for (int g = 0; g < count; ++g) {
      const GroupProg& gp = group[first + g];
      bool ok = true;
      for (int j = 0; j < prog::kNumCatFilters; ++j) ok = ok && (gp.field[j] != f || ((gp.mask[j] >> val) & 1));
      if (ok) bits |= 1u << g;
    }
    table[i] = bits;
  }
  const int64_t n_items = min(v.hdr[kNumItems], items_cap);
  for (int64_t it = blockIdx.x; it < n_items; it += gridDim.x) {
    const int64_t e_begin = items[4 * it + 1], e_end = items[4 * it + 2], j = items[4 * it + 3];
    __syncthreads();  // the tables are built; the previous item is done with active
    for (int64_t b = threadIdx.x; b < blocks; b += blockDim.x) active[b] = 0;
    __syncthreads();
    for (int64_t s = threadIdx.x; s < p.s; s += blockDim.x) {
      const int64_t blk = v.slice_block[s];
      const int64_t* r = p.prog_i + s * prog::kNumInt;
      if (blk >= 0 && covers(r[prog::kWinLo], r[prog::kWinHi], j, k, v.bounds))
        atomicOr(&active[blk], 1u << v.slice_pos[s]);
    }
    __syncthreads();
    for (int64_t e = e_begin + threadIdx.x; e < e_end; e += blockDim.x) {
      Event ev = load_event(tl, e);
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const uint32_t act = active[blk];
        if (act == 0) continue;
        const BlockKeep& kb = bk[blk];
        const uint32_t* tb = table + blk * nf * kCatValues;
        uint32_t mask = act;
        for (uint32_t fs = kb.fields; fs; fs &= fs - 1) {
          const int f = __ffs(fs) - 1;
          const uint32_t val = static_cast<uint32_t>((ev.cats >> (8 * f)) & 0xFFu);
          if (val < kCatValues) {
            mask &= tb[f * kCatValues + val];
          } else {  // outside [0, 63] (also reported by the timeline checks)
            if (kb.reads[f] & act) set_error(flag, kCatOutOfRange);
            mask &= ~kb.reads[f];
          }
        }
        for (uint32_t bits = act & (kb.flt | kb.full); bits; bits &= bits - 1) {
          const int g = __ffs(bits) - 1;
          const uint32_t bit = 1u << g;
          const GroupProg& gp = group[kb.first + g];
          float w = 0.f;
          const bool kept = (mask & bit) && ((kb.full & bit) ? group_keep(gp, tl, ev, w, flag)
                                                             : float_keep(gp, tl, ev, w));
          if (!kept) mask &= ~bit;
          if (kb.weighted & bit) kp.w[wsl[kb.first + g] * kp.n + e] = kept ? w : 0.f;
        }
        kp.mask[blk * kp.n + e] = mask;
      }
    }
  }
}

// The keep pass's shared memory must fit beside nothing else: larger programs skip it.
constexpr size_t kKeepSmemMax = 160 * 1024;

}  // namespace

Scratch with_keep(Scratch sc) {
  if (sc.keep.mask != nullptr && keep_smem_bytes(sc.keep) > kKeepSmemMax) sc.keep = Keep{};
  return sc;
}

cudaError_t launch_keep_pass(const Timeline& tl, const Program& prog, int64_t t_count, const Scratch& sc,
                             int64_t items_cap, int32_t* flag, cudaStream_t stream) {
  if (sc.keep.mask == nullptr) return cudaSuccess;
  const size_t smem = keep_smem_bytes(sc.keep);
  if (smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(keep_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  const int64_t grid = std::max<int64_t>(1, std::min<int64_t>(items_cap, int64_t(sm_count()) * 8));
  keep_kernel<<<static_cast<unsigned>(grid), kKeepThreads, smem, stream>>>(tl, prog, t_count, sc.plan, sc.items,
                                                                           items_cap, sc.keep, flag);
  return cudaGetLastError();
}

}  // namespace dv365::cuda::slicing
