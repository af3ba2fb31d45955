// Shared helpers for every dv365 kernel: argument checks whose messages name the op and the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "dv365_prog.h"

#include <cstdio>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>

// Error messages are formatted here without iostreams and handed to c10 as a `const char*`, so the only stream
// and std::string code that runs is libc10's own. On the H200 image (torch 2.11+cu130, g++ 13.3) an extension
// that formats with std::ostringstream (c10::str, also through TORCH_CHECK's variadic message) crashes with
// SIGSEGV, torch.utils.cpp_extension.load_inline ones included, while a literal message is raised and caught
// (suspected: the stream code inlined from g++ 13's headers does not match the libstdc++ the process loaded).
namespace dv365::detail {

inline void append(std::string& s, const char* v) { s += v ? v : "(null)"; }
inline void append(std::string& s, const std::string& v) { s += v; }
inline void append(std::string& s, std::string_view v) { s.append(v.data(), v.size()); }
inline void append(std::string& s, char v) { s += v; }
inline void append(std::string& s, bool v) { s += v ? "true" : "false"; }
template <typename T>
  requires std::is_integral_v<T>
inline void append(std::string& s, T v) {
  s += std::to_string(v);
}
template <typename T>
  requires std::is_floating_point_v<T>
inline void append(std::string& s, T v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", static_cast<double>(v));
  s += buf;
}
inline void append(std::string& s, c10::ScalarType v) { s += c10::toString(v); }
inline void append(std::string& s, const c10::Device& v) { s += v.str(); }
inline void append(std::string& s, c10::DeviceType v) { s += c10::DeviceTypeName(v, /*lower_case=*/true); }
inline void append(std::string& s, c10::IntArrayRef v) {
  s += '[';
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(v[i]);
  }
  s += ']';
}
template <typename T>
inline void append(std::string& s, const std::optional<T>& v) {
  if (v) {
    append(s, *v);
  } else {
    s += "None";
  }
}

template <typename... Args>
std::string format(const Args&... args) {
  std::string s;
  (append(s, args), ...);
  return s;
}

}  // namespace dv365::detail

#define DV365_RAISE(...)                                                        \
  do {                                                                          \
    const std::string dv365_message_ = ::dv365::detail::format(__VA_ARGS__);    \
    TORCH_CHECK(false, dv365_message_.c_str());                                 \
  } while (0)

#define DV365_CHECK(cond, op, ...)                             \
  do {                                                         \
    if (C10_UNLIKELY_OR_CONST(!(cond))) {                      \
      DV365_RAISE("dv365::", op, ": ", __VA_ARGS__);           \
    }                                                          \
  } while (0)
