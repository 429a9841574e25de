// The entry point of libstip_sentencepiece.so (see LoadSentencePieceTokenizer
// in tokenizer.h). Only this symbol is exported; errors cross the module
// boundary as a code and a message, not as exceptions.
#include <cstring>
#include <string>

#include "common/error.h"
#include "common/tokenizer/sentencepiece_tokenizer.h"

extern "C" __attribute__((visibility("default"))) stip::Tokenizer* stip_sentencepiece_open(
    const char* model_path, const char* config_path, int* error_code, char* message,
    size_t message_size) {
  auto fail = [&](int code, const std::string& what) -> stip::Tokenizer* {
    *error_code = code;
    std::snprintf(message, message_size, "%s", what.c_str());
    return nullptr;
  };
  try {
    return stip::SentencePieceTokenizer::FromFile(model_path, config_path).release();
  } catch (const stip::Error& e) {
    return fail(static_cast<int>(e.code()), e.what());
  } catch (const std::exception& e) {
    return fail(static_cast<int>(stip::ErrorCode::kInternal), e.what());
  }
}
