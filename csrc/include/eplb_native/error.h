#pragma once
// Error conventions of the core: user input -> std::invalid_argument (ValueError in Python),
// broken internal invariants -> std::logic_error via EPLB_CHECK (a bug, never user error).

#include <cstdint>
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
