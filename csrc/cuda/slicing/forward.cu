// The sliced_pool forward: pool_kernel sums each group's kept rows per work item and adds them into the slices
// covering the item's segment; finalize_kernel divides by the weight sums.
#include <algorithm>

#include "cuda/slicing/pool.cuh"

namespace dv365::cuda::slicing {
namespace {

// ---- forward ----
// grid: x strides over the items, y = block, z = column tile; one warp per CTA.
// R: rows in flight per lane (a multiple of 4 dividing kBatch).
template <typename scalar_t, typename acc_t, int C, int H, int R>
__global__ void __launch_bounds__(kWarp) pool_kernel(Timeline tl, Tables tabs, Program p, const int64_t* plan_raw,
                                                      const int64_t* __restrict__ items, Launch L,
                                                      acc_t* __restrict__ num, acc_t* __restrict__ wacc,
                                                      int32_t* flag) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const Cta<acc_t, C, H> cta(smem_raw, p, tabs, plan_raw, L);
  const Smem<acc_t>& sh = cta.sh;
  const int ng = cta.ng;
  if (ng == 0) return;
  constexpr int kTile = Cols<C, H>::kTile;
  const scalar_t* table = static_cast<const scalar_t*>(tabs.table[cta.table]);
  const int64_t stride = tabs.row_stride[cta.table];
  const int64_t* ids = tabs.ids[cta.table];
  const int lane = threadIdx.x;
  const bool kept = keep_ready(L.keep, cta.v, tl);
  if (!kept && sh.group == nullptr) {  // the host's bounds on the plan were wrong: never silently wrong sums
    if (threadIdx.x == 0) set_error(flag, kInternal);
    return;
  }
  for (int64_t it = blockIdx.x; it < cta.n_items; it += gridDim.x) {
    const int64_t b = items[4 * it], e_begin = items[4 * it + 1], e_end = items[4 * it + 2], j = items[4 * it + 3];
    const uint32_t active = cta.active_groups(p, j);
    if (active == 0) continue;
    __syncthreads();  // the previous item's flush has read the accumulators
    for (int i = lane; i < ng * kTile; i += kWarp) sh.acc[i] = acc_t(0);
    for (int g = lane; g < ng; g += kWarp) sh.wsum[g] = acc_t(0);
    uint32_t touched = 0;  // the groups that kept an event of the item
    for (int64_t e0 = e_begin; e0 < e_end; e0 += kBatch) {
      __syncthreads();
      // the batch's kept events, compacted (the keep pass), or every event of the batch
      int nb;
      if (kept) {
        nb = membership_kept<true, acc_t>(sh, L.keep, cta.blk, ng, active, e0, e_end, ids, tabs.rows[cta.table], flag);
      } else {
        membership<acc_t>(sh, tl, ng, active, e0, e_end, ids, tabs.rows[cta.table], flag);
        nb = static_cast<int>(min(static_cast<int64_t>(kBatch), e_end - e0));
      }
      __syncthreads();
      for (int u0 = 0; u0 < nb; u0 += R) {
        Chunk<scalar_t, C> raw[R][H];
#pragma unroll
        for (int u = 0; u < R; ++u) {
          const bool live = u0 + u < nb && sh.mask[u0 + u] != 0;
          const scalar_t* row = table + sh.row[u0 + u] * stride;
#pragma unroll
          for (int h = 0; h < H; ++h) {
            if (live && cta.valid[h]) {
              raw[u][h] = load_chunk<scalar_t, C>(row + cta.cols.col(h));
            } else {
#pragma unroll
              for (int i = 0; i < C; ++i) raw[u][h].v[i] = from_acc<scalar_t, float>(0.f);
            }
          }
        }
        // widened once here, not once per group that uses the row (16-bit tables)
        acc_t x[R][H][C];
#pragma unroll
        for (int u = 0; u < R; ++u) {
#pragma unroll
          for (int h = 0; h < H; ++h) {
#pragma unroll
            for (int i = 0; i < C; ++i) x[u][h][i] = to_acc<acc_t>(raw[u][h].v[i]);
          }
        }
        // four events at a time (events past nb have mask 0 and weight 0), one of two ways:
        // - per group in the union of their masks: one weight vector load and one read-modify-write of the
        //   group's accumulators for the four events (groups most events share, like "all");
        // - per (event, group) kept: one read-modify-write with that event's row alone (groups that partition
        //   the events, like action types, where four events mostly fall in different groups).
        // After the keep pass the batches hold only kept events, so unions are dense and the first way always wins;
        // without it (L.pick) the kernel takes whichever issues fewer instructions for these four events, where a
        // lane holds two chunks of each row (docs/tuning.md has the measurements).
#pragma unroll
        for (int q = 0; q < R; q += 4) {
          uint32_t m[4];
          uint32_t bits = 0;
          int hits = 0;
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            m[u] = sh.mask[u0 + q + u];
            bits |= m[u];
            hits += __popc(m[u]);
          }
          touched |= bits;
          constexpr int kGroupCost = 3 + H * (2 + 4 * C), kHitCost = 4 + H * (2 + C);
          if (L.pick && hits * kHitCost < __popc(bits) * kGroupCost) {
#pragma unroll
            for (int u = 0; u < 4; ++u) {
              for (uint32_t eb = m[u]; eb; eb &= eb - 1) {
                const int g = __ffs(eb) - 1;
                const acc_t w = static_cast<acc_t>(sh.w[g * kBatch + u0 + q + u]);
#pragma unroll
                for (int h = 0; h < H; ++h) {
                  auto* dst = reinterpret_cast<Chunk<acc_t, C>*>(sh.acc + g * kTile + cta.cols.off(h));
                  Chunk<acc_t, C> a = *dst;
#pragma unroll
                  for (int i = 0; i < C; ++i) a.v[i] += w * x[q + u][h][i];
                  *dst = a;
                }
                if (lane == 0) sh.wsum[g] += w;
              }
            }
            continue;
          }
          while (bits) {
            const int g = __ffs(bits) - 1;
            bits &= bits - 1;
            const float4 w4 = *reinterpret_cast<const float4*>(sh.w + g * kBatch + u0 + q);
            const acc_t w[4] = {acc_t(w4.x), acc_t(w4.y), acc_t(w4.z), acc_t(w4.w)};
#pragma unroll
            for (int h = 0; h < H; ++h) {
              auto* dst = reinterpret_cast<Chunk<acc_t, C>*>(sh.acc + g * kTile + cta.cols.off(h));
              Chunk<acc_t, C> a = *dst;
#pragma unroll
              for (int u = 0; u < 4; ++u) {
#pragma unroll
                for (int i = 0; i < C; ++i) a.v[i] += w[u] * x[q + u][h][i];
              }
              *dst = a;
            }
            if (lane == 0) sh.wsum[g] += (w[0] + w[1]) + (w[2] + w[3]);  // one writer: no atomics
          }
        }
      }
    }
    // flush: every slice of the block covering segment j gets its group's sums (each lane its own columns,
    // lane 0 the weight sums)
    __syncwarp();
    cta.for_covering(p, j, [&](int64_t s, int g) {
      if (!((touched >> g) & 1u)) return;
      if (blockIdx.z == 0 && lane == 0) atomicAdd(wacc + b * p.s + s, sh.wsum[g]);
#pragma unroll
      for (int h = 0; h < H; ++h) {
        if (!cta.valid[h]) continue;
        acc_t a[C];
        const acc_t* src = sh.acc + g * kTile + cta.cols.off(h);
#pragma unroll
        for (int i = 0; i < C; ++i) a[i] = src[i];
        atomic_add_n<acc_t, C>(num + (b * p.s + s) * L.d + cta.cols.col(h), a);
      }
    });
  }
}

template <typename scalar_t, typename acc_t>
__global__ void finalize_kernel(const acc_t* __restrict__ num, const acc_t* __restrict__ wsum, int64_t bs, int64_t d,
                                scalar_t* __restrict__ out, float* __restrict__ wsum_out) {
  const int64_t total = bs * d;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t first = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  for (int64_t i = first; i < total; i += step) {
    const acc_t s = wsum[i / d];
    out[i] = from_acc<scalar_t, acc_t>(s > 0 ? num[i] / s : acc_t(0));
  }
  for (int64_t r = first; r < bs; r += step) wsum_out[r] = static_cast<float>(wsum[r]);
}

template <typename scalar_t, int C, int H, int R>
cudaError_t pool_typed(const Timeline& tl, const Tables& tabs, const Program& prog, int64_t d, const Tuning& tune,
                       Scratch sc, void* num, void* wacc, int32_t* flag, cudaStream_t stream, int64_t items_cap) {
  using acc_t = typename AccType<scalar_t>::type;
  auto kernel = pool_kernel<scalar_t, acc_t, C, H, R>;
  LaunchShape shape;
  const cudaError_t err =
      shape_launch<Cols<C, H>::kTile, acc_t>(kernel, d, tune, prog, tabs, items_cap, sc.keep, shape);
  if (err != cudaSuccess) return err;
  // per union after the keep pass; without it the per-four-events choice where a lane holds two chunks of a row
  shape.L.pick = sc.keep.mask == nullptr && H >= 2;
  kernel<<<shape.grid, kWarp, shape.smem, stream>>>(tl, tabs, prog, sc.plan, sc.items, shape.L,
                                                    static_cast<acc_t*>(num), static_cast<acc_t*>(wacc), flag);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_sliced_pool(const Timeline& tl, const Tables& tabs, const Program& prog, int64_t d, DType dtype,
                               Tuning tune, Scratch sc, void* num, void* wacc, void* pooled, float* wsum,
                               int32_t* flag, cudaStream_t stream) {
  tune.block_groups = std::clamp(tune.block_groups, 1, kMaxBlockGroups);
  return with_dtype(dtype, [&](auto tag) {
    using scalar_t = decltype(tag);
    using acc_t = typename AccType<scalar_t>::type;
    constexpr int C = chunk_cols<scalar_t>(), H = chunks_per_lane<scalar_t>();
    sc = with_keep(sc);
    if (tl.n > 0 && d > 0 && prog.s > 0) {
      int64_t cap = 0;
      if (prepare_items(tl, prog, tabs.num_tables, sc, false, flag, stream, cap) != cudaSuccess) return;
      cudaError_t err;
      if (!vector_ok<C>(tabs, d, sizeof(scalar_t), true, nullptr)) {
        err = pool_typed<scalar_t, 1, 1, 8>(tl, tabs, prog, d, tune, sc, num, wacc, flag, stream, cap);
      } else if (tune.rows_in_flight >= 16) {
        err = pool_typed<scalar_t, C, H, 16>(tl, tabs, prog, d, tune, sc, num, wacc, flag, stream, cap);
      } else {
        err = pool_typed<scalar_t, C, H, 8>(tl, tabs, prog, d, tune, sc, num, wacc, flag, stream, cap);
      }
      if (err != cudaSuccess) return;
    }
    const int64_t bs = tl.num_users * prog.s;
    const int64_t total = std::max<int64_t>(bs * d, bs);
    if (total == 0) return;
    const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(ceil_div(total, 256), 132 * 32));
    finalize_kernel<scalar_t, acc_t><<<blocks, 256, 0, stream>>>(static_cast<const acc_t*>(num),
                                                                 static_cast<const acc_t*>(wacc), bs, d,
                                                                 static_cast<scalar_t*>(pooled), wsum);
  });
}

}  // namespace dv365::cuda::slicing
