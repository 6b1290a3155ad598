// ChatStream: the pull-style face of chat_stream(). The producer thread
// blocks when the consumer falls behind (bounded queue), so memory stays
// flat however long the stream; destroying the stream cancels the transfer
// and joins the thread.

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "chat_stream.h"

TAOTOKEN_BEGIN_NAMESPACE

class ChatStream::Impl {
 public:
  Impl(TaotokenClient client, ChatRequest request, RequestOptions options)
      : client_(std::move(client)), request_(std::move(request)), options_(std::move(options)) {
    // Our own token, chained to the caller's: cancelling either stops it.
    user_cancel_ = options_.cancel;
    if (user_cancel_) user_cancel_->link(cancel_);  // the caller's cancel reaches the transfer and waits
    options_.cancel = cancel_;
    thread_ = std::thread([this] { run(); });
  }

  ~Impl() {
    cancel_->cancel();
    {
      std::lock_guard<std::mutex> lock(mu_);
      closing_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  std::optional<Result<ChatCompletionChunk>> next() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return !queue_.empty() || finished_; });
    if (!queue_.empty()) {
      ChatCompletionChunk c = std::move(queue_.front());
      queue_.pop_front();
      cv_.notify_all();
      return Result<ChatCompletionChunk>(std::move(c));
    }
    if (!result_->ok() && !error_reported_) {
      error_reported_ = true;
      return Result<ChatCompletionChunk>(result_->error());
    }
    return std::nullopt;
  }

  Result<ChatCompletion> result() {
    std::unique_lock<std::mutex> lock(mu_);
    queue_.clear();  // the caller wants the end, not the chunks
    cv_.notify_all();
    cv_.wait(lock, [this] {
      queue_.clear();
      return finished_;
    });
    return *result_;
  }

 private:
  static constexpr std::size_t kQueueLimit = 256;

  void run() {
    std::optional<Result<ChatCompletion>> r;
    try {
      r.emplace(client_.chat_stream(
          request_,
          [this](const ChatCompletionChunk& chunk) {
            std::unique_lock<std::mutex> lock(mu_);
            // Polls the token too: a cancel does not notify this condition.
            while (!(queue_.size() < kQueueLimit || closing_ || cancel_->cancelled()))
              cv_.wait_for(lock, std::chrono::milliseconds(20));
            if (closing_ || cancel_->cancelled()) return false;
            queue_.push_back(chunk);
            cv_.notify_all();
            return true;
          },
          options_));
    } catch (const std::exception& e) {
      r.emplace(Error(ErrorKind::cancelled, std::string("the stream stopped: ") + e.what()));
    }
    std::lock_guard<std::mutex> lock(mu_);
    result_ = std::move(r);
    finished_ = true;
    cv_.notify_all();
  }

  TaotokenClient client_;
  ChatRequest request_;
  RequestOptions options_;
  std::shared_ptr<CancelToken> cancel_ = std::make_shared<CancelToken>();
  std::shared_ptr<CancelToken> user_cancel_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<ChatCompletionChunk> queue_;
  std::optional<Result<ChatCompletion>> result_;
  bool finished_ = false;
  bool closing_ = false;
  bool error_reported_ = false;
  std::thread thread_;
};

ChatStream::ChatStream(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ChatStream::ChatStream(ChatStream&&) noexcept = default;
ChatStream& ChatStream::operator=(ChatStream&&) noexcept = default;
ChatStream::~ChatStream() = default;

std::optional<Result<ChatCompletionChunk>> ChatStream::next() {
  if (!impl_) return std::nullopt;
  return impl_->next();
}

Result<ChatCompletion> ChatStream::result() {
  if (!impl_) return Error(ErrorKind::invalid_argument, "the stream was moved from");
  return impl_->result();
}

namespace detail {
ChatStream start_chat_stream(const TaotokenClient& client, const ChatRequest& request, const RequestOptions& options) {
  return ChatStream(std::make_unique<ChatStream::Impl>(client, request, options));
}
}  // namespace detail

TAOTOKEN_END_NAMESPACE
