#pragma once
// Host-side bf16 / fp16 <-> fp32 conversions with round-to-nearest-even, NaN-preserving.
// The one rounding helper of the reference; the numpy golden re-implements it independently.

#include <cstdint>
#include <cstring>

namespace eplb_native::shared {

[[nodiscard]] inline uint32_t f32_bits(float value) {
    uint32_t bits = 0;
    std::memcpy(&bits, &value, sizeof(bits));
    return bits;
}

[[nodiscard]] inline float f32_from_bits(uint32_t bits) {
    float value = 0.0F;
    std::memcpy(&value, &bits, sizeof(value));
    return value;
}

// bf16 is the top half of an fp32: exact widening.
[[nodiscard]] inline float bf16_to_f32(uint16_t bits) {
    return f32_from_bits(static_cast<uint32_t>(bits) << 16U);
}

// fp32 -> bf16, round to nearest, ties to even. NaN stays NaN (quiet bit set, sign kept);
// overflow rounds to +-inf as IEEE RNE does.
[[nodiscard]] inline uint16_t f32_to_bf16_rne(float value) {
    const uint32_t bits = f32_bits(value);
    if ((bits & 0x7FFFFFFFU) > 0x7F800000U) {
        return static_cast<uint16_t>((bits >> 16U) | 0x0040U);
    }
    const uint32_t lsb = (bits >> 16U) & 1U;
    return static_cast<uint16_t>((bits + 0x7FFFU + lsb) >> 16U);
}

// fp16 -> fp32, exact (subnormals normalised, inf/NaN kept).
[[nodiscard]] inline float f16_to_f32(uint16_t bits) {
    const uint32_t sign = static_cast<uint32_t>(bits & 0x8000U) << 16U;
    const uint32_t exponent = (bits >> 10U) & 0x1FU;
    const uint32_t mantissa = bits & 0x3FFU;
    if (exponent == 0x1FU) {
        return f32_from_bits(sign | 0x7F800000U | (mantissa << 13U));
    }
    if (exponent == 0) {
        // mantissa * 2^-24, exact in fp32.
        const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8F;
        return sign != 0 ? -magnitude : magnitude;
    }
    return f32_from_bits(sign | ((exponent + 112U) << 23U) | (mantissa << 13U));
}

// fp32 -> fp16, round to nearest, ties to even, with subnormals and overflow to +-inf.
[[nodiscard]] inline uint16_t f32_to_f16_rne(float value) {
    const uint32_t bits = f32_bits(value);
    const uint32_t sign = (bits >> 16U) & 0x8000U;
    const uint32_t magnitude = bits & 0x7FFFFFFFU;
    if (magnitude > 0x7F800000U) {
        return static_cast<uint16_t>(sign | 0x7E00U | ((magnitude >> 13U) & 0x3FFU));
    }
    if (magnitude >= 0x477FF000U) {  // >= 65520 rounds to inf (65504 has an odd mantissa)
        return static_cast<uint16_t>(sign | 0x7C00U);
    }
    if (magnitude < 0x38800000U) {  // below 2^-14: fp16 subnormal or zero
        const uint32_t exponent = magnitude >> 23U;
        if (exponent < 102U) {  // below 2^-25: rounds to zero
            return static_cast<uint16_t>(sign);
        }
        const uint32_t mantissa = (magnitude & 0x7FFFFFU) | 0x800000U;
        const uint32_t shift = 126U - exponent;  // value / 2^-24 = mantissa >> shift
        uint32_t quotient = mantissa >> shift;
        const uint32_t remainder = mantissa & ((1U << shift) - 1U);
        const uint32_t half = 1U << (shift - 1U);
        if (remainder > half || (remainder == half && (quotient & 1U) != 0)) {
            ++quotient;
        }
        return static_cast<uint16_t>(sign | quotient);
    }
    uint32_t rounded = (magnitude - 0x38000000U) >> 13U;
    const uint32_t remainder = magnitude & 0x1FFFU;
    if (remainder > 0x1000U || (remainder == 0x1000U && (rounded & 1U) != 0)) {
        ++rounded;
    }
    return static_cast<uint16_t>(sign | rounded);
}

}  // namespace eplb_native::shared
