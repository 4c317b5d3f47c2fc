// Excerpts of user input in error messages (base/text_excerpt.h): short, escaped, never
// splitting a UTF-8 character, and the UTF-8 check the data loader relies on.
#include <gtest/gtest.h>

#include <string>

#include "base/text_excerpt.h"

using qlora::excerpt;
using qlora::excerpt_around;
using qlora::first_invalid_utf8;
using qlora::safe_message;

TEST(TextExcerpt, ShortInputIsQuotedAsIs) {
  EXPECT_EQ(excerpt("nf5"), "'nf5'");
  EXPECT_EQ(excerpt(""), "''");
  EXPECT_EQ(excerpt("caf\u00e9 \u65e5\u672c"), "'caf\u00e9 \u65e5\u672c'");  // valid UTF-8 stays readable
}

TEST(TextExcerpt, LongInputIsCutWithItsSize) {
  const std::string big(10'000'000, 'a');
  EXPECT_EQ(excerpt(big, 5), "'aaaaa'... (10000000 bytes)");
  EXPECT_EQ(excerpt(big).size(), std::string("''... (10000000 bytes)").size() + qlora::kExcerptBytes);
}

TEST(TextExcerpt, ControlAndInvalidBytesAreEscaped) {
  EXPECT_EQ(excerpt("a\nb\tc\x1b[2J\x7f"), "'a\\nb\\tc\\x1B[2J\\x7F'");
  EXPECT_EQ(excerpt("caf\xE9!"), "'caf\\xE9!'");
  EXPECT_EQ(excerpt("\xC2\x9B"), "'\\xC2\\x9B'");  // C1 control (CSI) as bytes
  EXPECT_EQ(excerpt(std::string("a\0b", 3)), "'a\\x00b'");
}

TEST(TextExcerpt, CutsNeverSplitACharacter) {
  // "é" is 2 bytes: a 4-byte budget over "aaaé" stops before it rather than emit half.
  EXPECT_EQ(excerpt("aaa\u00e9", 4), "'aaa'... (5 bytes)");
  const std::string s = "xx\u65e5\u672c\u8a9e";  // 2 + 3 * 3 bytes
  const std::string e = excerpt_around(s, 6, 6);  // the window starts inside 日
  EXPECT_EQ(first_invalid_utf8(e), std::string::npos) << e;
}

TEST(TextExcerpt, AroundShowsContextAndMarksCuts) {
  const std::string line = std::string(1000, 'a') + "!" + std::string(1000, 'b');
  const std::string e = excerpt_around(line, 1000, 30);
  EXPECT_EQ(e, "'..." + std::string(10, 'a') + "!" + std::string(19, 'b') + "...' (2001 bytes)");
  EXPECT_EQ(excerpt_around("tru", 3), "'tru'");
}

TEST(TextExcerpt, SafeMessageKeepsNewlinesAndCaps) {
  EXPECT_EQ(safe_message("line 1\nline 2\x1b"), "line 1\nline 2\\x1B");
  EXPECT_EQ(safe_message(std::string(50, 'x'), 10), std::string(10, 'x') + "... (50 bytes)");
}

TEST(TextExcerpt, FirstInvalidUtf8) {
  EXPECT_EQ(first_invalid_utf8("plain ascii"), std::string::npos);
  EXPECT_EQ(first_invalid_utf8("\u00e9\u65e5\U0001F600"), std::string::npos);
  EXPECT_EQ(first_invalid_utf8("ab\xFF"), 2u);
  EXPECT_EQ(first_invalid_utf8("ab\xC3"), 2u);              // truncated sequence
  EXPECT_EQ(first_invalid_utf8("\xC0\xAF"), 0u);            // overlong '/'
  EXPECT_EQ(first_invalid_utf8("x\xED\xA0\x80"), 1u);       // UTF-16 surrogate
  EXPECT_EQ(first_invalid_utf8("\xF4\x90\x80\x80"), 0u);    // above U+10FFFF
}
