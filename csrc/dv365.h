// Shared helpers for every dv365 kernel: argument checks whose messages name the op and the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "dv365_prog.h"

#include <string>

// The message is formatted here and handed to c10 as a `const char*`, so libc10 builds the error's std::string
// itself. On the H200 image (torch 2.11+cu130, g++ 13) any extension, torch.utils.cpp_extension.load_inline
// included, crashes when TORCH_CHECK passes c10 a std::string it formatted; the const char* path works.
#define DV365_RAISE(...)                                                        \
  do {                                                                          \
    const std::string dv365_message_ = ::c10::str(__VA_ARGS__);                  \
    TORCH_CHECK(false, dv365_message_.c_str());                                 \
  } while (0)

#define DV365_CHECK(cond, op, ...)                             \
  do {                                                         \
    if (C10_UNLIKELY_OR_CONST(!(cond))) {                      \
      DV365_RAISE("dv365::", op, ": ", __VA_ARGS__);           \
    }                                                          \
  } while (0)
