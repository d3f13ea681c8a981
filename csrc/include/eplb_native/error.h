#pragma once
// Error conventions of the core: user input -> std::invalid_argument (ValueError in Python),
// broken internal invariants -> std::logic_error via EPLB_CHECK (a bug, never user error).

#include <cstdint>
#include <initializer_list>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace eplb_native {

// Throws std::invalid_argument with "<field>: <message>".
[[noreturn]] inline void throw_invalid(const std::string& field, const std::string& message) {
    throw std::invalid_argument(field + ": " + message);
}

// Throws std::invalid_argument "<field>: expected a positive integer, got <value>" unless value > 0.
inline void require_positive(int64_t value, const std::string& field) {
    if (value <= 0) {
        throw_invalid(field, "expected a positive integer, got " + std::to_string(value));
    }
}

// The most elements one array of a plan or of a map derived from it may hold (2 GiB of int64):
// a size beyond it is bad input, refused before anything is allocated.
constexpr int64_t kMaxArrayElements = int64_t{1} << 28;

// The product of `extents` (each >= 0); throws std::invalid_argument "<field>: <what> (a x b
// elements) exceeds the limit of ... elements" when it exceeds kMaxArrayElements (computed
// without overflow).
inline int64_t require_array_size(const std::string& field,
                                  std::initializer_list<int64_t> extents,
                                  const std::string& what) {
    int64_t product = 1;
    for (const int64_t extent : extents) {
        if (extent == 0) {
            return 0;
        }
    }
    for (const int64_t extent : extents) {
        if (product > kMaxArrayElements / extent) {
            std::string sizes;
            for (const int64_t each : extents) {
                sizes += (sizes.empty() ? "" : " x ") + std::to_string(each);
            }
            throw_invalid(field, what + " (" + sizes + " elements) exceeds the limit of " +
                                     std::to_string(kMaxArrayElements) + " elements");
        }
        product *= extent;
    }
    return product;
}

// "(3, 4, 5)" for a shape, as numpy prints it.
[[nodiscard]] inline std::string shape_str(const std::vector<int64_t>& shape) {
    std::ostringstream out;
    out << '(';
    for (size_t i = 0; i < shape.size(); ++i) {
        out << (i ? ", " : "") << shape[i];
    }
    out << (shape.size() == 1 ? ",)" : ")");
    return out.str();
}

}  // namespace eplb_native

#define EPLB_CHECK(cond, msg)                                                                 \
    do {                                                                                      \
        if (!(cond)) {                                                                        \
            std::ostringstream eplb_check_stream_;                                            \
            eplb_check_stream_ << "internal error (" << __FILE__ << ":" << __LINE__ << "): " \
                               << #cond << ": " << msg;                                       \
            throw std::logic_error(eplb_check_stream_.str());                                 \
        }                                                                                     \
    } while (false)
