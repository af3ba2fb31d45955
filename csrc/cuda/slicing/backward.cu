// The sliced_pool backward: backward_kernel scatters each event's gradient into its table's dense rows or its
// per-event row; zero_rows_kernel and finish_rows_kernel prepare and convert the per-event accumulators.
#include <algorithm>
#include <type_traits>

#include "cuda/slicing/pool.cuh"

namespace dv365::cuda::slicing {
namespace {

// a[h] += the sum over the groups in `bits` of event u's weight times the group's gradient vector (gvec).
template <typename acc_t, int C, int H>
__device__ __forceinline__ void add_groups(const Smem<acc_t>& sh, const acc_t* gvec, const Cols<C, H>& cols,
                                           uint32_t bits, int u, acc_t (&a)[H][C]) {
  constexpr int kTile = Cols<C, H>::kTile;
  while (bits) {
    const int g = __ffs(bits) - 1;
    bits &= bits - 1;
    const acc_t w = static_cast<acc_t>(sh.w[g * kBatch + u]);
#pragma unroll
    for (int h = 0; h < H; ++h) {
      const Chunk<acc_t, C> gv = *reinterpret_cast<const Chunk<acc_t, C>*>(gvec + g * kTile + cols.off(h));
#pragma unroll
      for (int i = 0; i < C; ++i) a[h][i] += w * gv.v[i];
    }
  }
}

// ---- backward ----
// kRows: tabs.out[t] is [n, D] (scalar_t), written per event (stored, or added when zeroed_rows);
// else tabs.out[t] is a dense [rows, D] accumulator (acc_t), added into atomically. The dense accumulator's cost
// is its atomics, and many land on the same few rows (a user's favourite topics and authors, the catalogue's hits):
// float atomics on one address serialise in L2. So the events a batch shares a row with are summed in registers
// first and their row is added once: with kSort the batch's kept events are ranked by row (64 keys, one warp), so
// every repeat in the batch merges; without, only consecutive repeats do.
template <bool kRows, bool kSort, typename scalar_t, typename acc_t, int C, int H>
__global__ void __launch_bounds__(kWarp) backward_kernel(Timeline tl, Tables tabs, Program p, const int64_t* plan_raw,
                                                          const int64_t* __restrict__ items, Launch L,
                                                          const scalar_t* __restrict__ grad,
                                                          const void* __restrict__ weight_sum, bool ws_double,
                                                          int32_t* flag) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Cta<acc_t, C, H> cta(smem_raw, p, tabs, plan_raw, L);
  const Smem<acc_t>& sh = cta.sh;
  const int ng = cta.ng;
  if (ng == 0) return;
  constexpr int kTile = Cols<C, H>::kTile;
  const int64_t t = cta.table;
  const int64_t* ids = tabs.ids[t];
  // a table pooled by one block has its rows stored (every event of the timeline lies in one item); a table
  // with several blocks adds into tabs.rows_acc (zeroed by zero_rows_kernel)
  const bool store = kRows && ceil_div(cta.v.tcount[t], L.bg) == 1;
  acc_t* gvec = sh.acc;  // [g][tile]: sum over the group's covering slices of grad / weight_sum
  const bool kept = keep_ready(L.keep, cta.v, tl);
  if (!kept && sh.group == nullptr) {  // the host's bounds on the plan were wrong: never silently wrong sums
    if (threadIdx.x == 0) set_error(flag, kInternal);
    return;
  }
  for (int64_t it = blockIdx.x; it < cta.n_items; it += gridDim.x) {
    const int64_t b = items[4 * it], e_begin = items[4 * it + 1], e_end = items[4 * it + 2], j = items[4 * it + 3];
    const uint32_t active = cta.active_groups(p, j);
    if (active == 0 && !store) continue;
    __syncthreads();  // the previous item is done with gvec
#pragma unroll
    for (int h = 0; h < H; ++h) {
      for (int g = 0; g < ng; ++g) {
#pragma unroll
        for (int i = 0; i < C; ++i) gvec[g * kTile + cta.cols.off(h) + i] = acc_t(0);
      }
    }
    cta.for_covering(p, j, [&](int64_t s, int g) {
      const acc_t ws = ws_double ? static_cast<acc_t>(static_cast<const double*>(weight_sum)[b * p.s + s])
                                 : static_cast<acc_t>(static_cast<const float*>(weight_sum)[b * p.s + s]);
      if (!(ws > 0)) return;
#pragma unroll
      for (int h = 0; h < H; ++h) {
        if (!cta.valid[h]) continue;
        const Chunk<scalar_t, C> gr = load_chunk<scalar_t, C>(grad + (b * p.s + s) * L.d + cta.cols.col(h));
#pragma unroll
        for (int i = 0; i < C; ++i) gvec[g * kTile + cta.cols.off(h) + i] += to_acc<acc_t>(gr.v[i]) / ws;
      }
    });
    for (int64_t e0 = e_begin; e0 < e_end; e0 += kBatch) {
      __syncthreads();
      if (kept) {
        membership_kept<false, acc_t>(sh, L.keep, cta.blk, ng, active, e0, e_end, ids, tabs.rows[t], flag);
      } else {
        membership<acc_t>(sh, tl, ng, active, e0, e_end, ids, tabs.rows[t], flag);
      }
      __syncthreads();
      const int nb = static_cast<int>(min(static_cast<int64_t>(kBatch), e_end - e0));
      if constexpr (kRows) {
        for (int u = 0; u < nb; ++u) {
          uint32_t bits = sh.mask[u];
          if (!bits && !store) continue;
          acc_t a[H][C];
#pragma unroll
          for (int h = 0; h < H; ++h) {
#pragma unroll
            for (int i = 0; i < C; ++i) a[h][i] = acc_t(0);
          }
          add_groups<acc_t, C, H>(sh, gvec, cta.cols, bits, u, a);
#pragma unroll
          for (int h = 0; h < H; ++h) {
            if (!cta.valid[h]) continue;
            scalar_t* dst = static_cast<scalar_t*>(tabs.out[t]) + (e0 + u) * L.d + cta.cols.col(h);
            if (store) {
              Chunk<scalar_t, C> o;
#pragma unroll
              for (int i = 0; i < C; ++i) o.v[i] = from_acc<scalar_t, acc_t>(a[h][i]);
              *reinterpret_cast<Chunk<scalar_t, C>*>(dst) = o;
            } else {
              atomic_add_n<acc_t, C>(static_cast<acc_t*>(tabs.rows_acc[t]) + (e0 + u) * L.d + cta.cols.col(h), a[h]);
            }
          }
        }
      } else {
        int live = nb;
        if constexpr (kSort) {
          // rank of event i: the kept events with a smaller row, or the same row and a smaller position; the
          // events no group keeps rank after every kept one (the loop below stops at the first of them)
          const int lane = threadIdx.x;
          const int64_t k0 = lane < nb && sh.mask[lane] ? sh.row[lane] : INT64_MAX;
          const int64_t k1 = lane + kWarp < nb && sh.mask[lane + kWarp] ? sh.row[lane + kWarp] : INT64_MAX;
          int r0 = 0, r1 = 0;
          for (int j = 0; j < kBatch; ++j) {
            const int64_t kj = j < nb && sh.mask[j] ? sh.row[j] : INT64_MAX;
            r0 += kj < k0 || (kj == k0 && j < lane);
            r1 += kj < k1 || (kj == k1 && j < lane + kWarp);
          }
          sh.order[r0] = lane;
          sh.order[r1] = lane + kWarp;
          live = __popc(__ballot_sync(0xffffffffu, lane < nb && sh.mask[lane] != 0)) +
                 __popc(__ballot_sync(0xffffffffu, lane + kWarp < nb && sh.mask[lane + kWarp] != 0));
          __syncwarp();
        }
        acc_t a[H][C];
        int64_t row = -1;  // the row `a` sums for
        const auto flush = [&] {
#pragma unroll
          for (int h = 0; h < H; ++h) {
            if (cta.valid[h]) {
              atomic_add_n<acc_t, C>(static_cast<acc_t*>(tabs.out[t]) + row * L.d + cta.cols.col(h), a[h]);
            }
#pragma unroll
            for (int i = 0; i < C; ++i) a[h][i] = acc_t(0);
          }
        };
#pragma unroll
        for (int h = 0; h < H; ++h) {
#pragma unroll
          for (int i = 0; i < C; ++i) a[h][i] = acc_t(0);
        }
        for (int k = 0; k < live; ++k) {
          const int u = kSort ? sh.order[k] : k;
          const uint32_t bits = sh.mask[u];
          if (!bits) continue;
          const int64_t r = sh.row[u];
          if (r != row) {
            if (row >= 0) flush();
            row = r;
          }
          add_groups<acc_t, C, H>(sh, gvec, cta.cols, bits, u, a);
        }
        if (row >= 0) flush();
      }
    }
  }
}

// Zeroes the per-event accumulators of the tables that do not have exactly one block (grid.y = table).
template <typename acc_t>
__global__ void zero_rows_kernel(Tables tabs, const int64_t* plan_raw, int64_t s_count, int64_t bg, int64_t total) {
  const PlanView v(const_cast<int64_t*>(plan_raw), s_count, tabs.num_tables);
  const int64_t t = blockIdx.y;
  if (ceil_div(v.tcount[t], bg) == 1) return;
  acc_t* out = static_cast<acc_t*>(tabs.rows_acc[t]);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = acc_t(0);
}

// 16-bit dtypes: the per-event rows of the tables with several blocks, from their float32 accumulators.
template <typename scalar_t>
__global__ void finish_rows_kernel(Tables tabs, const int64_t* plan_raw, int64_t s_count, int64_t bg, int64_t total) {
  const PlanView v(const_cast<int64_t*>(plan_raw), s_count, tabs.num_tables);
  const int64_t t = blockIdx.y;
  if (ceil_div(v.tcount[t], bg) == 1) return;
  const float* acc = static_cast<const float*>(tabs.rows_acc[t]);
  scalar_t* out = static_cast<scalar_t*>(tabs.out[t]);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = from_acc<scalar_t, float>(acc[i]);
}

// The grid of the per-event row passes (zero_rows_kernel, finish_rows_kernel): grid.y = table.
dim3 rows_grid(int64_t total, int64_t num_tables) {
  return dim3(static_cast<unsigned>(std::min<int64_t>(ceil_div(total, 256), 132 * 8)),
              static_cast<unsigned>(num_tables));
}

template <bool kRows, bool kSort, typename scalar_t, int C, int H>
cudaError_t backward_typed(const Timeline& tl, const Tables& tabs, const Program& prog, int64_t d, const Tuning& tune,
                           Scratch sc, const void* grad, const void* weight_sum, bool ws_double, int32_t* flag,
                           cudaStream_t stream, int64_t items_cap) {
  using acc_t = typename AccType<scalar_t>::type;
  auto kernel = backward_kernel<kRows, kSort, scalar_t, acc_t, C, H>;
  LaunchShape shape;
  cudaError_t err = shape_launch<Cols<C, H>::kTile, acc_t>(kernel, d, tune, prog, tabs, items_cap, sc.keep, shape);
  if (err != cudaSuccess) return err;
  const int64_t total = tl.n * d;  // per-event row elements
  const int64_t bg = shape.L.bg;
  if constexpr (kRows) {
    zero_rows_kernel<acc_t><<<rows_grid(total, tabs.num_tables), 256, 0, stream>>>(tabs, sc.plan, prog.s, bg, total);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  kernel<<<shape.grid, kWarp, shape.smem, stream>>>(tl, tabs, prog, sc.plan, sc.items, shape.L,
                                                    static_cast<const scalar_t*>(grad), weight_sum, ws_double, flag);
  err = cudaGetLastError();
  if constexpr (kRows && sizeof(scalar_t) == 2) {
    if (err != cudaSuccess) return err;
    finish_rows_kernel<scalar_t><<<rows_grid(total, tabs.num_tables), 256, 0, stream>>>(tabs, sc.plan, prog.s, bg,
                                                                                      total);
    err = cudaGetLastError();
  }
  return err;
}

}  // namespace

cudaError_t launch_sliced_pool_backward(bool rows, const Timeline& tl, const Tables& tabs, const Program& prog,
                                        int64_t d, DType dtype, Tuning tune, Scratch sc, const void* grad,
                                        const void* weight_sum, bool ws_double, int32_t* flag, cudaStream_t stream) {
  tune.block_groups = std::clamp(tune.block_groups, 1, kMaxBlockGroups);
  if (tl.n == 0 || d == 0 || prog.s == 0 || tl.num_users == 0) return cudaSuccess;
  return with_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    // 16-bit dtypes take two 8-byte chunks a lane (not one of 16 bytes): each float4 atomic of the warp then
    // covers one contiguous 512 bytes of the float32 accumulators, rather than every other 16 bytes of 1 KB
    constexpr int H = 2, C = sizeof(scalar_t) == 2 ? 4 : chunk_cols<scalar_t>();
    int64_t cap = 0;
    sc = with_keep(sc);
    // the per-event rows visit every event (a table with one block stores every row, zeros included)
    if (prepare_items(tl, prog, tabs.num_tables, sc, rows, flag, stream, cap) != cudaSuccess) return;
    const bool vec = vector_ok<C>(tabs, d, sizeof(scalar_t), false, grad);
    const auto run = [&](auto rows_tag, auto sort_tag) {  // errors surface through with_dtype's cudaGetLastError
      constexpr bool kRows = decltype(rows_tag)::value, kSort = decltype(sort_tag)::value;
      vec ? backward_typed<kRows, kSort, scalar_t, C, H>(tl, tabs, prog, d, tune, sc, grad, weight_sum, ws_double,
                                                        flag, stream, cap)
          : backward_typed<kRows, kSort, scalar_t, 1, 1>(tl, tabs, prog, d, tune, sc, grad, weight_sum, ws_double,
                                                        flag, stream, cap);
    };
    // the per-event rows have one destination per event: nothing to sort
    if (rows) {
      run(std::true_type{}, std::false_type{});
    } else if (tune.sort_rows) {
      run(std::false_type{}, std::true_type{});
    } else {
      run(std::false_type{}, std::false_type{});
    }
  });
}

}  // namespace dv365::cuda::slicing
