#include "taotoken/chat.h"

#include "transport.h"

TAOTOKEN_BEGIN_NAMESPACE

ContentPart ContentPart::text_part(std::string text) {
  ContentPart p;
  p.type = "text";
  p.text = std::move(text);
  return p;
}

ContentPart ContentPart::image(std::string url, std::optional<std::string> detail) {
  ContentPart p;
  p.type = "image_url";
  p.image_url = std::move(url);
  p.detail = std::move(detail);
  return p;
}

ContentPart ContentPart::raw(std::string json_object) {
  ContentPart p;
  p.type = "raw";
  p.raw_json = std::move(json_object);
  return p;
}

namespace {
Message make(const char* role, std::string content) {
  Message m;
  m.role = role;
  m.content = std::move(content);
  return m;
}
}  // namespace

Message Message::system(std::string content) { return make("system", std::move(content)); }
Message Message::developer(std::string content) { return make("developer", std::move(content)); }
Message Message::user(std::string content) { return make("user", std::move(content)); }
Message Message::assistant(std::string content) { return make("assistant", std::move(content)); }

Message Message::user(std::vector<ContentPart> parts) {
  Message m;
  m.role = "user";
  m.parts = std::move(parts);
  return m;
}

Message Message::tool(std::string tool_call_id, std::string content) {
  Message m = make("tool", std::move(content));
  m.tool_call_id = std::move(tool_call_id);
  return m;
}

const std::string& ChatCompletion::text() const noexcept {
  static const std::string kEmpty;
  if (choices.empty() || !choices.front().message.content) return kEmpty;
  return *choices.front().message.content;
}

const std::string* RawResponse::header(std::string_view name) const noexcept {
  return detail::find_header(headers, name);
}

TAOTOKEN_END_NAMESPACE
