// A gated MLP's up product with the activation in its epilogue, for Hopper GPUs (sm_90a):
//
//     out = silu(g) * (x @ w.T)      x [M, K], w [N, K], g and out [M, N], all bf16 and contiguous
//
// g is the gate product (x @ w_gate.T), computed before by cuBLAS. The product is a CUTLASS 3
// kernel (TMA loads, warp-specialized warpgroup matrix instructions); its epilogue reads the tile
// of g through TMA as the product's "source" operand and writes silu(g) * acc once, rounded from
// float32. This takes the elementwise kernel silu(g) * u, and the round trip of u through memory,
// out of the MLP. Built by benchmarks/cutlass_build.py with nvcc and CUTLASS's headers (4.2);
// called through ctypes (no PyTorch headers, so one build serves any PyTorch version). Timed by
// python -m benchmarks.fused_mlp --cutlass: no faster than cuBLAS plus the elementwise kernel on
// an H100 (benchmarks/README.md), so no toolkit code uses it.
#include <cstdio>
#include "cute/tensor.hpp"
#include "cutlass/cutlass.h"
#include "cutlass/epilogue/collective/collective_builder.hpp"
#include "cutlass/epilogue/fusion/sm90_visitor_tma_warpspecialized.hpp"
#include "cutlass/epilogue/thread/activation.h"
#include "cutlass/gemm/collective/collective_builder.hpp"
#include "cutlass/gemm/device/gemm_universal_adapter.h"
#include "cutlass/gemm/kernel/gemm_universal.hpp"
#include "cutlass/util/packed_stride.hpp"

using namespace cute;
using Elem = cutlass::bfloat16_t;
using LayoutA = cutlass::layout::RowMajor;     // x [M, K]
using LayoutB = cutlass::layout::ColumnMajor;  // w [N, K]: K contiguous
using LayoutC = cutlass::layout::RowMajor;     // g, out [M, N]
constexpr int Align = 16 / sizeof(Elem);
constexpr auto Round = cutlass::FloatRoundStyle::round_to_nearest;

namespace fus = cutlass::epilogue::fusion;
// out = silu(C) * acc, C = g
using GatedEVT = fus::Sm90EVT<fus::Sm90Compute<cutlass::multiplies, Elem, float, Round>,
                              fus::Sm90EVT<fus::Sm90Compute<cutlass::epilogue::thread::SiLu, float, float, Round>,
                                           fus::Sm90SrcFetch<Elem>>,
                              fus::Sm90AccFetch>;
// out = acc: the same product without the activation (benchmarks.fused_mlp compares it with cuBLAS)
using PlainEVT = fus::Sm90EVT<fus::Sm90Compute<cutlass::epilogue::thread::Identity, Elem, float, Round>, fus::Sm90AccFetch>;

template <class Tile, class Cluster, class KSched, class ESched, class EVT, class ElemC>
struct Runner {
  using Epi = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Tile, Cluster,
      cutlass::epilogue::collective::EpilogueTileAuto, float, float,
      ElemC, LayoutC, Align, Elem, LayoutC, Align, ESched, EVT>::CollectiveOp;
  using Main = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, Elem, LayoutA, Align, Elem, LayoutB, Align, float,
      Tile, Cluster,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epi::SharedStorage))>,
      KSched>::CollectiveOp;
  using Kernel = cutlass::gemm::kernel::GemmUniversal<Shape<int, int, int, int>, Main, Epi, cutlass::gemm::PersistentScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;

  static int run(const void* x, const void* w, const void* c, void* out, int M, int N, int K, int sms,
                 cudaStream_t stream, char* err, int errlen) {
    using SA = typename Kernel::StrideA;
    using SB = typename Kernel::StrideB;
    using SC = typename Kernel::StrideC;
    using SD = typename Kernel::StrideD;
    SA sa = cutlass::make_cute_packed_stride(SA{}, make_shape(M, K, 1));
    SB sb = cutlass::make_cute_packed_stride(SB{}, make_shape(N, K, 1));
    SC sc = cutlass::make_cute_packed_stride(SC{}, make_shape(M, N, 1));
    SD sd = cutlass::make_cute_packed_stride(SD{}, make_shape(M, N, 1));
    cutlass::KernelHardwareInfo hw;
    cudaGetDevice(&hw.device_id);
    hw.sm_count = sms;
    typename Gemm::Arguments args{cutlass::gemm::GemmUniversalMode::kGemm, {M, N, K, 1},
                                  {static_cast<const Elem*>(x), sa, static_cast<const Elem*>(w), sb},
                                  {{}, static_cast<const ElemC*>(c), sc, static_cast<Elem*>(out), sd}, hw};
    Gemm gemm;
    if (Gemm::get_workspace_size(args) != 0) {
      snprintf(err, errlen, "the kernel asks for a workspace");
      return 1;
    }
    cutlass::Status s = gemm.can_implement(args);
    if (s != cutlass::Status::kSuccess) {
      snprintf(err, errlen, "CUTLASS cannot take M=%d N=%d K=%d: %s", M, N, K, cutlassGetStatusString(s));
      return 2;
    }
    s = gemm.initialize(args, nullptr, stream);
    if (s != cutlass::Status::kSuccess) {
      snprintf(err, errlen, "initialize: %s", cutlassGetStatusString(s));
      return 3;
    }
    s = gemm.run(stream);
    cudaError_t e = cudaGetLastError();
    if (s != cutlass::Status::kSuccess || e != cudaSuccess) {
      snprintf(err, errlen, "launch: %s; %s", cutlassGetStatusString(s), cudaGetErrorString(e));
      return 4;
    }
    return 0;
  }
};

using Coop = cutlass::gemm::KernelTmaWarpSpecializedCooperative;
using CoopE = cutlass::epilogue::TmaWarpSpecializedCooperative;
using Ping = cutlass::gemm::KernelTmaWarpSpecializedPingpong;
using PingE = cutlass::epilogue::TmaWarpSpecialized;

// variant: 0-2 the gated product at three tile shapes and schedules, 10-12 the same three without
// the activation (and no g). Returns 0, or an error code with a message in err.
extern "C" int interp_gated_up(int variant, const void* x, const void* w, const void* g, void* out,
                               int M, int N, int K, int sms, void* stream, char* err, int errlen) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  using T0 = Shape<_128, _256, _64>;
  using T1 = Shape<_128, _128, _64>;
  using C21 = Shape<_2, _1, _1>;
  using C12 = Shape<_1, _2, _1>;
  switch (variant) {
    case 0: return Runner<T0, C21, Coop, CoopE, GatedEVT, Elem>::run(x, w, g, out, M, N, K, sms, st, err, errlen);
    case 1: return Runner<T1, C12, Ping, PingE, GatedEVT, Elem>::run(x, w, g, out, M, N, K, sms, st, err, errlen);
    case 2: return Runner<T0, C12, Coop, CoopE, GatedEVT, Elem>::run(x, w, g, out, M, N, K, sms, st, err, errlen);
    case 10: return Runner<T0, C21, Coop, CoopE, PlainEVT, void>::run(x, w, nullptr, out, M, N, K, sms, st, err, errlen);
    case 11: return Runner<T1, C12, Ping, PingE, PlainEVT, void>::run(x, w, nullptr, out, M, N, K, sms, st, err, errlen);
    case 12: return Runner<T0, C12, Coop, CoopE, PlainEVT, void>::run(x, w, nullptr, out, M, N, K, sms, st, err, errlen);
    default: snprintf(err, errlen, "no variant %d", variant); return 9;
  }
}
