// The op table: one entry per Op, in enum order. A test checks that every op either has a VJP
// or is marked non-differentiable, and that the names are unique.
#include "op.hpp"

#include <array>

namespace gg::detail {

extern const OpDef kInputDef, kParamDef, kStateDef, kConstantDef, kFillDef, kMatMulDef, kAddDef, kSubDef, kMulDef,
    kDivDef, kNegDef, kScaleDef, kAddScalarDef, kPowDef, kExpDef, kLogDef, kSqrtDef, kReluDef, kSigmoidDef, kTanhDef,
    kReluGradDef, kSoftmaxDef, kLogSoftmaxDef, kSumDef, kSumToDef, kBroadcastToDef, kReshapeDef, kTransposeDef,
    kSceDef, kSceGradDef, kArgmaxDef, kEqualDef, kGreaterDef, kAddReluDef, kSceFusedDef, kLossSlotDef, kSgdUpdateDef,
    kMomentumUpdateDef, kAdamUpdateDef;

namespace {
const std::array<const OpDef*, static_cast<std::size_t>(Op::Count_)>& table() {
  static const std::array<const OpDef*, static_cast<std::size_t>(Op::Count_)> t = {
      &kInputDef,    &kParamDef,       &kStateDef,     &kConstantDef,  &kFillDef,           &kMatMulDef,
      &kAddDef,      &kSubDef,         &kMulDef,       &kDivDef,       &kNegDef,            &kScaleDef,
      &kAddScalarDef, &kPowDef,        &kExpDef,       &kLogDef,       &kSqrtDef,           &kReluDef,
      &kSigmoidDef,  &kTanhDef,        &kReluGradDef,  &kSoftmaxDef,   &kLogSoftmaxDef,     &kSumDef,
      &kSumToDef,    &kBroadcastToDef, &kReshapeDef,   &kTransposeDef, &kSceDef,            &kSceGradDef,
      &kArgmaxDef,   &kEqualDef,       &kGreaterDef,   &kAddReluDef,   &kSceFusedDef,       &kLossSlotDef,       &kSgdUpdateDef,      &kMomentumUpdateDef,
      &kAdamUpdateDef};
  return t;
}
}  // namespace

const OpDef& op_def(Op op) { return *table()[static_cast<std::size_t>(op)]; }

}  // namespace gg::detail
