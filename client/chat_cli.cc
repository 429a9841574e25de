#include "client/chat_cli.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <string>

#include "common/error.h"
#include "common/tokenizer/tokenizer.h"

namespace stip {

namespace {

std::atomic<bool>* g_flag = nullptr;
std::atomic<int> g_presses{0};

void OnInterrupt(int) {
  if (!g_flag) return;
  if (g_flag->load()) {
    if (g_presses.fetch_add(1) + 1 >= 2) _exit(130);
  } else {
    g_presses.store(0);
  }
  g_flag->store(true);
}

enum class LineStatus { kLine, kEof, kInterrupted };

// Line reader on a file descriptor that notices interrupts while waiting.
class LineReader {
 public:
  LineReader(int fd, std::atomic<bool>* interrupted) : fd_(fd), interrupted_(interrupted) {}

  LineStatus Next(std::string* line) {
    for (;;) {
      size_t nl = buffer_.find('\n');
      if (nl != std::string::npos) {
        *line = buffer_.substr(0, nl);
        buffer_.erase(0, nl + 1);
        if (!line->empty() && line->back() == '\r') line->pop_back();
        return LineStatus::kLine;
      }
      if (eof_) {
        if (buffer_.empty()) return LineStatus::kEof;
        *line = std::move(buffer_);
        buffer_.clear();
        return LineStatus::kLine;
      }
      if (interrupted_ && interrupted_->load()) return LineStatus::kInterrupted;
      pollfd p{fd_, POLLIN, 0};
      int r = poll(&p, 1, 100);
      if (r < 0 && errno != EINTR) return LineStatus::kEof;
      if (r <= 0) continue;
      char buf[4096];
      ssize_t n = read(fd_, buf, sizeof buf);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        eof_ = true;
        continue;
      }
      buffer_.append(buf, static_cast<size_t>(n));
    }
  }

 private:
  int fd_;
  std::atomic<bool>* interrupted_;
  std::string buffer_;
  bool eof_ = false;
};

}  // namespace

void InstallInterruptHandler(std::atomic<bool>* flag) {
  g_flag = flag;
  struct sigaction sa {};
  sa.sa_handler = OnInterrupt;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocking read returns EINTR
  sigaction(SIGINT, &sa, nullptr);
}

int RunChat(Generator& generator, const GenerateOptions& options, int in_fd, std::FILE* out,
            std::FILE* err, std::atomic<bool>* interrupted) {
  return RunChat(generator, options, in_fd, out, err, interrupted, TurnFunction());
}

int RunChat(Generator& generator, const GenerateOptions& options, int in_fd, std::FILE* out,
            std::FILE* err, std::atomic<bool>* interrupted, const TurnFunction& turn_function) {
  LineReader reader(in_fd, interrupted);
  const bool bpe = generator.bundle().tokenizer().kind() == "bpe";
  GenerateOptions turn = options;
  turn.cancelled = [interrupted] { return interrupted && interrupted->load(); };
  std::string line;
  for (;;) {
    std::fputs("> ", out);
    std::fflush(out);
    LineStatus status = reader.Next(&line);
    if (status != LineStatus::kLine) {
      std::fputs("\n", out);
      std::fflush(out);
      return 0;
    }
    if (line == "/exit" || line == "/quit") return 0;
    if (line == "/reset") {
      generator.Reset();
      std::fputs("(new conversation)\n", out);
      continue;
    }
    if (line.empty()) continue;
    // Byte-level BPE glues a turn to the previous answer; SentencePiece
    // starts every encoded text with a space of its own.
    // (In chat mode the template separates the turns.)
    std::string prompt = line;
    if (bpe && !generator.chat_mode() && !generator.history().empty() && prompt[0] != ' ' &&
        prompt[0] != '\n') {
      prompt = " " + prompt;
    }
    if (interrupted) interrupted->store(false);
    try {
      PieceCallback print = [out](const std::string& piece, const std::vector<int64_t>&) {
        std::fputs(piece.c_str(), out);
        std::fflush(out);
      };
      GenerateResult r = turn_function ? turn_function(generator, prompt, turn, print)
                                       : generator.Generate(prompt, turn, print);
      std::fputs("\n", out);
      std::fflush(out);
      if (r.finish_reason == "cancelled") std::fputs("(interrupted)\n", err);
      if (generator.chat_mode()) {
        spdlog::info(
            "chat turn: conversation of {} tokens, {} reused from the session's cache, "
            "{} prefilled; {} generated ({})",
            r.conversation_length, r.reused_positions, r.prefilled_positions, r.token_ids.size(),
            r.finish_reason);
      }
    } catch (const std::exception& e) {
      std::fputs("\n", out);
      std::fprintf(err, "stip-client: error: %s\n", e.what());
    }
    std::fflush(out);
    std::fflush(err);
    if (interrupted) interrupted->store(false);
  }
}

}  // namespace stip
