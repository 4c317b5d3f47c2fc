// base/openmp_wait.h: the decoding commands get a bounded OpenMP spin unless the user chose a
// wait behaviour already; nothing else does. (The re-exec that applies it runs in every CLI
// test that calls `qlora generate`, `chat` or `serve`.)
#include "base/openmp_wait.h"

#include <gtest/gtest.h>

using qlora::decode_spin_count;

TEST(OpenmpWait, DecodingCommandsSpinBriefly) {
  for (const char* cmd : {"generate", "chat", "serve"}) {
    EXPECT_EQ(decode_spin_count(cmd, nullptr, nullptr), std::to_string(qlora::kDecodeSpinCount)) << cmd;
    EXPECT_EQ(decode_spin_count(cmd, nullptr, "passive"), std::to_string(qlora::kDecodeSpinCount)) << cmd;
    EXPECT_EQ(decode_spin_count(cmd, nullptr, "PASSIVE"), std::to_string(qlora::kDecodeSpinCount)) << cmd;
  }
}

TEST(OpenmpWait, TheUsersChoiceAndOtherCommandsAreLeftAlone) {
  EXPECT_FALSE(decode_spin_count("generate", "0", nullptr));            // GOMP_SPINCOUNT set (even to 0)
  EXPECT_FALSE(decode_spin_count("generate", "100000", "passive"));
  EXPECT_FALSE(decode_spin_count("chat", nullptr, "active"));           // spinning without limit, asked for
  EXPECT_FALSE(decode_spin_count("serve", nullptr, "ACTIVE"));
  for (const char* cmd : {"train", "eval", "merge", "quantize", "memory", "inspect", "version", "", "--help"})
    EXPECT_FALSE(decode_spin_count(cmd, nullptr, "passive")) << cmd;
}
