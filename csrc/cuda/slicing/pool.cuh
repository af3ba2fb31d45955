// What the pooling kernels (forward.cu, backward.cu) share: a CTA's columns, its shared memory, the membership
// step (in-kernel or from the keep pass), the CTA's start, and the launch shape.
#pragma once

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "cuda/slicing/keep.cuh"
#include "cuda/slicing/plan.cuh"

namespace dv365::cuda::slicing {

constexpr int kBatch = 64;   // events per membership step

// ---- the CTA's columns ----
// A CTA is one warp. Lane l owns H chunks of C consecutive columns (C * sizeof(T) = 16 bytes, one vector
// load): chunk h covers columns h * 32 C + l C + [0, C) of the CTA's tile of 32 H C columns. Each load or
// shared-memory access instruction of the warp thus covers one contiguous span (a row's 1 KB in fp32 is
// H = 2 instructions of 512 bytes), and the per-event overhead (mask test, row address, loop control, the
// weight load) is paid once per H * C columns.
template <typename T, int C>
struct alignas(sizeof(T) * C < 16 ? sizeof(T) * C : 16) Chunk {
  T v[C];
};

constexpr int kWarp = 32;

template <int C, int H>
struct Cols {
  static constexpr int kTile = kWarp * H * C;
  int64_t base;  // the tile's first column
  int lane;
  __device__ __forceinline__ int64_t col(int h) const { return base + h * kWarp * C + lane * C; }
  __device__ __forceinline__ int off(int h) const { return h * kWarp * C + lane * C; }  // within the tile
};

// ---- the membership step shared by the forward and backward kernels ----
template <typename acc_t>
struct Smem {
  GroupProg* group;  // [block_groups]
  float* w;          // [block_groups][kBatch]: the weight of each (group, event), 0 when not kept
  uint32_t* mask;    // [kBatch]
  int64_t* row;      // [kBatch]
  acc_t* wsum;       // [block_groups]
  acc_t* acc;        // [block_groups][tile]
  int* wsl;          // [block_groups]: each group's row in the keep pass's weights (PlanView::wslot)
  int* order;        // [kBatch]: the backward's events of a batch ordered by row (kept events first)
};

// groups: the block's predicates are held (no keep pass: the kernel evaluates them).
template <typename acc_t>
__host__ __device__ size_t smem_bytes(int block_groups, int tile, bool groups) {
  size_t b = 0;
  b += sizeof(acc_t) * block_groups * tile;
  if (groups) b += sizeof(GroupProg) * block_groups;
  b += sizeof(int64_t) * kBatch;
  b += sizeof(acc_t) * block_groups;
  b += sizeof(float) * kBatch * block_groups;
  b += sizeof(uint32_t) * kBatch;
  b += sizeof(int) * block_groups;
  b += sizeof(int) * kBatch;
  return b;
}

// acc, group, row and w have sizes that are multiples of 16 bytes, so the vector accesses to acc and w are
// aligned.
template <typename acc_t>
__device__ Smem<acc_t> carve(unsigned char* raw, int block_groups, int tile, bool groups) {
  Smem<acc_t> s;
  s.acc = reinterpret_cast<acc_t*>(raw);
  raw += sizeof(acc_t) * block_groups * tile;
  s.group = nullptr;
  if (groups) {
    s.group = reinterpret_cast<GroupProg*>(raw);
    raw += sizeof(GroupProg) * block_groups;
  }
  s.row = reinterpret_cast<int64_t*>(raw);
  raw += sizeof(int64_t) * kBatch;
  s.w = reinterpret_cast<float*>(raw);
  raw += sizeof(float) * kBatch * block_groups;
  s.wsum = reinterpret_cast<acc_t*>(raw);
  raw += sizeof(acc_t) * block_groups;
  s.mask = reinterpret_cast<uint32_t*>(raw);
  raw += sizeof(uint32_t) * kBatch;
  s.wsl = reinterpret_cast<int*>(raw);
  raw += sizeof(int) * block_groups;
  s.order = reinterpret_cast<int*>(raw);
  return s;
}

// Evaluates the active groups on events [e0, e0 + kBatch) ∩ [.., e1): masks, weights, rows. Ends before a
// barrier (the caller's).
template <typename acc_t>
__device__ __forceinline__ void membership(const Smem<acc_t>& sh, const Timeline& tl, int ng, uint32_t active,
                                           int64_t e0, int64_t e1, const int64_t* __restrict__ ids, int64_t num_rows,
                                           int32_t* flag) {
  for (int el = threadIdx.x; el < kBatch; el += blockDim.x) {
    const int64_t e = e0 + el;
    uint32_t mask = 0;
    int64_t id = 0;
    if (e < e1) {
      id = ids[e];
      if (id < 0 || id >= num_rows) {
        set_error(flag, kIdOutOfRange);
        id = 0;
      } else {
        Event ev = load_event(tl, e);
        for (int g = 0; g < ng; ++g) {
          float wg = 0.f;
          if (((active >> g) & 1u) && group_keep(sh.group[g], tl, ev, wg, flag)) {
            mask |= 1u << g;
          } else {
            wg = 0.f;
          }
          sh.w[g * kBatch + el] = wg;
        }
      }
    }
    if (mask == 0) {
      for (int g = 0; g < ng; ++g) sh.w[g * kBatch + el] = 0.f;
    }
    sh.mask[el] = mask;
    sh.row[el] = id;
  }
}


// The membership step from the keep pass's output (one warp): the block's masks of events [e0, e0 + kBatch) ∩
// [.., e1) and the weights of their kept groups, the ids of the kept events. kCompact: only the events some
// active group keeps, in event order from position 0, then empty events (mask 0, weight 0) up to the next
// multiple of 16; returns their count. Else every event at its position (mask 0 for the others); returns the
// batch's event count. Ends before a barrier (the caller's).
template <bool kCompact, typename acc_t>
__device__ __forceinline__ int membership_kept(const Smem<acc_t>& sh, const Keep& kp, int64_t blk, int ng,
                                               uint32_t active, int64_t e0, int64_t e1,
                                               const int64_t* __restrict__ ids, int64_t num_rows, int32_t* flag) {
  const int lane = threadIdx.x;
  const uint32_t* __restrict__ bm = kp.mask + blk * kp.n;
  int live = 0;
#pragma unroll
  for (int el0 = 0; el0 < kBatch; el0 += kWarp) {
    const int el = el0 + lane;
    const int64_t e = e0 + el;
    uint32_t mask = 0;
    int64_t id = 0;
    if (active != 0 && e < e1) {
      mask = bm[e] & active;
      if (mask != 0) {
        id = ids[e];
        if (id < 0 || id >= num_rows) {
          set_error(flag, kIdOutOfRange);
          id = 0;
          mask = 0;
        }
      }
    }
    int pos = el;
    if constexpr (kCompact) {
      const uint32_t kept = __ballot_sync(0xffffffffu, mask != 0);
      pos = live + __popc(kept & ((1u << lane) - 1u));
      live += __popc(kept);
      if (mask == 0) continue;
    }
    for (int g = 0; g < ng; ++g) {
      float w = 0.f;
      if ((mask >> g) & 1u) {
        const int ws = sh.wsl[g];
        w = ws >= 0 ? kp.w[ws * kp.n + e] : 1.f;
      }
      sh.w[g * kBatch + pos] = w;
    }
    sh.mask[pos] = mask;
    sh.row[pos] = id;
  }
  if constexpr (kCompact) {
    const int end = min(kBatch, (live + 15) / 16 * 16);
    for (int pos = live + lane; pos < end; pos += kWarp) {
      for (int g = 0; g < ng; ++g) sh.w[g * kBatch + pos] = 0.f;
      sh.mask[pos] = 0;
      sh.row[pos] = 0;
    }
    return live;
  }
  return static_cast<int>(min(static_cast<int64_t>(kBatch), e1 - e0));
}

struct Launch {
  int64_t d, col_tiles, max_blocks, items_cap;
  int bg;
  // the forward adds four events' rows per group in the union of their masks, or, with pick, per (event, group)
  // kept where that issues fewer instructions (see pool_kernel)
  bool pick = false;
  Keep keep;
};

// What every pooling CTA starts with: its block's groups in shared memory, the plan, its columns.
template <typename acc_t, int C, int H>
struct Cta {
  Smem<acc_t> sh;
  PlanView v;
  int64_t blk, table, k, n_items;
  int ng;  // 0: this CTA's block does not exist
  Cols<C, H> cols;
  bool valid[H];  // chunk h lies within the D columns (D % C == 0)

  __device__ Cta(unsigned char* raw, const Program& p, const Tables& tabs, const int64_t* plan_raw, const Launch& L)
      : sh(carve<acc_t>(raw, L.bg, Cols<C, H>::kTile, L.keep.mask == nullptr)),
        v(const_cast<int64_t*>(plan_raw), p.s, tabs.num_tables),
        blk(blockIdx.y),
        table(0),
        k(v.hdr[kNumBounds]),
        n_items(min(v.hdr[kNumItems], L.items_cap)),
        ng(0) {
    cols.base = static_cast<int64_t>(blockIdx.z) * Cols<C, H>::kTile;
    cols.lane = threadIdx.x;
#pragma unroll
    for (int h = 0; h < H; ++h) valid[h] = cols.col(h) < L.d;
    if (blk >= v.hdr[kNumBlocks]) return;
    ng = static_cast<int>(v.block_count[blk]);
    const int64_t first = v.block_first[blk];
    table = v.block_table[blk];
    for (int g = threadIdx.x; g < ng; g += blockDim.x) {
      if (sh.group != nullptr) sh.group[g] = load_group(p, v.group_leader[first + g]);
      sh.wsl[g] = static_cast<int>(v.wslot[first + g]);
    }
  }

  // Calls f(s, g) for every slice s of this block whose window covers segment j (g: its group's position),
  // in slice order, on every lane (the lanes test 32 slices at once).
  template <typename F>
  __device__ __forceinline__ void for_covering(const Program& p, int64_t j, F&& f) const {
    for (int64_t s0 = 0; s0 < p.s; s0 += kWarp) {
      const int64_t s = s0 + cols.lane;
      bool hit = false;
      if (s < p.s && v.slice_block[s] == blk) {
        const int64_t* r = p.prog_i + s * prog::kNumInt;
        hit = covers(r[prog::kWinLo], r[prog::kWinHi], j, k, v.bounds);
      }
      for (uint32_t bits = __ballot_sync(0xffffffffu, hit); bits; bits &= bits - 1) {
        const int64_t sl = s0 + __ffs(bits) - 1;
        f(sl, static_cast<int>(v.slice_pos[sl]));
      }
    }
  }

  // The groups of this block with a slice covering segment j.
  __device__ __forceinline__ uint32_t active_groups(const Program& p, int64_t j) const {
    uint32_t active = 0;
    for_covering(p, j, [&](int64_t, int g) { active |= 1u << g; });
    return active;
  }
};

template <typename T, int C>
__device__ __forceinline__ Chunk<T, C> load_chunk(const T* p) {
  return *reinterpret_cast<const Chunk<T, C>*>(p);
}

// ---- launch helpers ----
// Columns per 16-byte chunk, and chunks per lane (two for 4- and 8-byte types: a 1 KB fp32 row is one warp's
// two loads), when every pointer and row stride allows; else one column per lane.
template <typename scalar_t>
constexpr int chunk_cols() {
  return static_cast<int>(16 / sizeof(scalar_t));
}
template <typename scalar_t>
constexpr int chunks_per_lane() {
  return sizeof(scalar_t) >= 4 ? 2 : 1;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// tables: the forward's inputs (pointers and row strides); outs: the backward's grad and outputs.
template <int C>
bool vector_ok(const Tables& tabs, int64_t d, size_t elem, bool forward, const void* grad) {
  if (d % C != 0) return false;
  for (int64_t t = 0; t < tabs.num_tables; ++t) {
    if (forward && (tabs.row_stride[t] % C != 0 || !aligned16(tabs.table[t]))) return false;
    if (!forward && !aligned16(tabs.out[t])) return false;
  }
  return forward || aligned16(grad);
}

template <typename K>
cudaError_t configure(K kernel, size_t smem, int threads, int64_t items_cap, int64_t& grid_x) {
  if (smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(smem));
    if (err != cudaSuccess) return err;
  }
  // the occupancy query costs tens of microseconds of host time: once per (device, kernel, smem)
  struct Key {
    int device;
    const void* kernel;
    size_t smem;
  };
  static std::mutex mu;
  static std::vector<std::pair<Key, int>> known;
  int device = 0;
  cudaGetDevice(&device);
  int per_sm = 0;
  {
    const std::lock_guard<std::mutex> lock(mu);
    for (const auto& [k, v] : known) {
      if (k.device == device && k.kernel == reinterpret_cast<const void*>(kernel) && k.smem == smem) per_sm = v;
    }
  }
  if (per_sm == 0) {
    const cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem);
    if (err != cudaSuccess) return err;
    per_sm = std::max(per_sm, 1);
    const std::lock_guard<std::mutex> lock(mu);
    known.push_back({Key{device, reinterpret_cast<const void*>(kernel), smem}, per_sm});
  }
  // enough CTAs to fill the GPU for any one block; the rest of a block's items are strided over them
  grid_x = std::max<int64_t>(1, std::min<int64_t>(items_cap, static_cast<int64_t>(std::max(per_sm, 1)) * sm_count()));
  return cudaSuccess;
}

// A pooling kernel's launch: its columns and blocks (tune.num_blocks, the plan's), shared memory, and a grid that
// fills the GPU for any one block.
struct LaunchShape {
  Launch L;
  size_t smem = 0;
  dim3 grid;
};

template <int kTile, typename acc_t, typename K>
cudaError_t shape_launch(K kernel, int64_t d, const Tuning& tune, const Program& prog, const Tables& tabs,
                         int64_t items_cap, const Keep& keep, LaunchShape& shape) {
  Launch& L = shape.L;
  L.keep = keep;
  L.d = d;
  L.col_tiles = ceil_div(d, kTile);
  L.bg = tune.block_groups;
  L.max_blocks = std::max<int64_t>(tune.num_blocks, 1);
  L.items_cap = items_cap;
  shape.smem = smem_bytes<acc_t>(L.bg, kTile, keep.mask == nullptr);
  int64_t gx = 1;
  const cudaError_t err = configure(kernel, shape.smem, kWarp, items_cap, gx);
  shape.grid = dim3(static_cast<unsigned>(gx), static_cast<unsigned>(L.max_blocks), static_cast<unsigned>(L.col_tiles));
  return err;
}


}  // namespace dv365::cuda::slicing
