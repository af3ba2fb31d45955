// Shared helpers for every dv365 kernel: argument checks whose messages name the op and the argument.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "dv365_prog.h"

#define DV365_CHECK(cond, op, ...) TORCH_CHECK((cond), "dv365::", op, ": ", __VA_ARGS__)
