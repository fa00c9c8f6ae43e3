// SPDX-License-Identifier: GPL-2.0
#define VARIANT 'B'
#include "reuse.h"
