#ifndef TAOTOKEN_SRC_CHAT_STREAM_H
#define TAOTOKEN_SRC_CHAT_STREAM_H

#include "taotoken/client.h"
#include "taotoken/stream.h"

TAOTOKEN_BEGIN_NAMESPACE
namespace detail {

// Starts a pull-style stream: chat_stream() runs on a helper thread and
// hands chunks over through a bounded queue.
ChatStream start_chat_stream(const TaotokenClient& client, const ChatRequest& request, const RequestOptions& options);

}  // namespace detail
TAOTOKEN_END_NAMESPACE

#endif
