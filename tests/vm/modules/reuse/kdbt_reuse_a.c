// SPDX-License-Identifier: GPL-2.0
#define VARIANT 'A'
#include "reuse.h"
