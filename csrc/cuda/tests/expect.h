// The check macro of the host-side tests of the CUDA sources: a failed EXPECT prints where and counts.
#pragma once

#include <cstdio>

static int failures = 0;
#define EXPECT(cond)                                                  \
  do {                                                                \
    if (!(cond)) {                                                    \
      std::printf("%s:%d: expected %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                     \
    }                                                                 \
  } while (0)
