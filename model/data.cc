#include "model/data.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "config/enum_names.h"
#include "model/internal/utf8.h"

namespace fedmoe::model {
namespace {

namespace fs = std::filesystem;

// A paragraph longer than this is cut, so a file without blank lines still streams.
constexpr size_t kMaxParagraphBytes = size_t{1} << 20;
// Examples are sorted by length within pools of this many batches.
constexpr int64_t kBucketPoolBatches = 8;
// Packed sequences are drawn at random from a buffer of this many batches.
constexpr int64_t kShuffleBufferBatches = 4;

bool IsDataFile(const fs::path& path) {
  const std::string extension = path.extension().string();
  return extension == ".txt" || extension == ".md" || extension == ".jsonl";
}

uint64_t Fnv1a(std::string_view text) {
  uint64_t hash = 0xcbf29ce484222325ull;
  for (const char c : text) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 0x100000001b3ull;
  }
  return hash;
}

}  // namespace

constexpr config::EnumName<RecordUnit> kRecordUnitNames[] = {{RecordUnit::kLine, "line"},
                                                             {RecordUnit::kParagraph, "paragraph"},
                                                             {RecordUnit::kFile, "file"}};

absl::StatusOr<RecordUnit> ParseRecordUnit(std::string_view name) {
  if (std::optional<RecordUnit> unit = config::ValueOf(kRecordUnitNames, name)) return *unit;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown record unit '", std::string(name), "' (line, paragraph, file)"));
}

std::string_view RecordUnitName(RecordUnit unit) {
  return config::NameOf(kRecordUnitNames, unit, "paragraph");
}

int64_t Record::predictions() const {
  int64_t count = 0;
  for (size_t i = 1; i < loss.size(); ++i) count += loss[i];
  return count;
}

int64_t Record::windows(int64_t seq_len) const {
  const auto inputs = static_cast<int64_t>(tokens.size()) - 1;
  return inputs <= 0 ? 0 : (inputs + seq_len - 1) / seq_len;
}

absl::StatusOr<RecordSet> ReadRecords(const fs::path& directory, const Tokenizer& tokenizer,
                                      const DataOptions& options, RecordUnit unit) {
  absl::StatusOr<std::unique_ptr<DataStream>> stream =
      DataStream::Open(directory, tokenizer, Split::kTrain, options);
  if (!stream.ok()) return stream.status();
  RecordSet set;
  set.unit = unit;
  (*stream)->record_set_ = &set;
  while ((*stream)->Fill()) {
  }
  set.counts = (*stream)->counts_;
  return set;
}

void DataStream::AppendToRecord(std::span<const int32_t> tokens, int64_t loss_from) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    const bool first = open_record_.tokens.empty();
    open_record_.tokens.push_back(tokens[i]);
    open_record_.loss.push_back(!first && static_cast<int64_t>(i) >= loss_from ? 1 : 0);
  }
  if (record_set_->unit != RecordUnit::kFile) CloseRecord();
}

void DataStream::CloseRecord() {
  if (open_record_.tokens.empty()) return;
  if (open_record_.predictions() == 0) {
    ++record_set_->empty_records;
  } else {
    record_set_->records.push_back(std::move(open_record_));
  }
  open_record_ = Record();
}

absl::StatusOr<std::unique_ptr<DataStream>> DataStream::Open(const fs::path& directory,
                                                             const Tokenizer& tokenizer,
                                                             Split split, DataOptions options) {
  if (options.seq_len < 2) return absl::InvalidArgumentError("seq_len must be at least 2");
  if (options.batch_size < 1) return absl::InvalidArgumentError("batch size must be at least 1");
  if (!(options.validation_fraction >= 0 && options.validation_fraction < 1)) {
    return absl::InvalidArgumentError("the validation fraction must be in [0, 1)");
  }
  if (options.eos_token < 0 || options.eos_token >= tokenizer.vocab_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the EOS token ", options.eos_token, " is not in the tokenizer's vocabulary"));
  }
  std::error_code error;
  if (!fs::is_directory(directory, error)) {
    return absl::InvalidArgumentError(absl::StrCat(directory.string(), " is not a directory"));
  }
  std::vector<fs::path> files;
  for (fs::recursive_directory_iterator it(directory, error), end; !error && it != end;
       it.increment(error)) {
    if (it->is_regular_file(error) && IsDataFile(it->path())) files.push_back(it->path());
  }
  if (error) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot list ", directory.string(), ": ", error.message()));
  }
  if (files.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(directory.string(), " has no .txt, .md or .jsonl files"));
  }
  std::sort(files.begin(), files.end());
  return std::unique_ptr<DataStream>(
      new DataStream(std::move(files), directory, tokenizer, split, std::move(options)));
}

DataStream::DataStream(std::vector<fs::path> files, fs::path root, const Tokenizer& tokenizer,
                       Split split, DataOptions options)
    : files_(std::move(files)),
      root_(std::move(root)),
      tokenizer_(tokenizer),
      split_(split),
      options_(std::move(options)),
      random_(options_.seed) {
  order_.resize(files_.size());
  std::iota(order_.begin(), order_.end(), size_t{0});
  if (split_ == Split::kTrain) std::shuffle(order_.begin(), order_.end(), random_);
}

void DataStream::Warn(int64_t line, std::string_view why) {
  if (epoch_ > 0) return;
  ++counts_.skipped_lines;
  if (options_.warn) options_.warn(absl::StrCat(current_name_, ":", line, ": ", std::string(why)));
}

bool DataStream::InSplit(int64_t line) const {
  const uint64_t bucket = Fnv1a(absl::StrCat(current_name_, ":", line)) % 1'000'000;
  const bool validation = static_cast<double>(bucket) < options_.validation_fraction * 1'000'000.0;
  return validation == (split_ == Split::kValidation);
}

bool DataStream::OpenNextFile() {
  current_.close();
  while (next_file_ < order_.size()) {
    const fs::path& path = files_[order_[next_file_++]];
    current_name_ = fs::relative(path, root_).string();
    current_.open(path, std::ios::binary);
    line_number_ = 0;
    if (!current_) {
      if (epoch_ == 0) {
        ++counts_.skipped_files;
        if (options_.warn) options_.warn(absl::StrCat(current_name_, ": cannot be read, skipped"));
      }
      continue;
    }
    // A NUL byte early on marks a binary file, whatever its name says.
    char head[4096];
    current_.read(head, sizeof(head));
    const auto head_bytes = static_cast<size_t>(current_.gcount());
    if (std::find(head, head + head_bytes, '\0') != head + head_bytes) {
      if (epoch_ == 0) {
        ++counts_.skipped_files;
        if (options_.warn) options_.warn(absl::StrCat(current_name_, ": binary file, skipped"));
      }
      current_.close();
      continue;
    }
    current_.clear();
    current_.seekg(0);
    current_is_jsonl_ = fs::path(current_name_).extension() == ".jsonl";
    if (epoch_ == 0) ++counts_.files;
    return true;
  }
  return false;
}

bool DataStream::Fill() {
  std::string line;
  for (;;) {
    if (!current_.is_open() && !OpenNextFile()) return false;
    if (!std::getline(current_, line)) {
      FinishParagraph();
      current_.close();
      if (record_set_ != nullptr) CloseRecord();
      continue;
    }
    ++line_number_;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (internal::FirstInvalidUtf8(line) != std::string_view::npos) {
      Warn(line_number_, "invalid UTF-8, line skipped");
      return true;
    }
    if (current_is_jsonl_) {
      ReadJsonLine(line);
      return true;
    }
    if (absl::StripAsciiWhitespace(line).empty()) {
      FinishParagraph();
      return true;
    }
    if (paragraph_.empty()) paragraph_line_ = line_number_;
    absl::StrAppend(&paragraph_, line, "\n");
    const bool line_records = record_set_ != nullptr && record_set_->unit == RecordUnit::kLine;
    // A record is never cut: a long paragraph stays one record, however many windows it takes.
    if (line_records || (record_set_ == nullptr && paragraph_.size() > kMaxParagraphBytes)) {
      FinishParagraph();
    }
    return true;
  }
}

void DataStream::FinishParagraph() {
  if (!paragraph_.empty() && InSplit(paragraph_line_)) AddText(paragraph_);
  paragraph_.clear();
}

void DataStream::ReadJsonLine(const std::string& line) {
  if (absl::StripAsciiWhitespace(line).empty()) return;
  const nlohmann::json json = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  auto text_field = [&json](const char* key) -> const nlohmann::json* {
    return json.is_object() && json.contains(key) && json.at(key).is_string() ? &json.at(key)
                                                                              : nullptr;
  };
  if (json.is_discarded()) {
    Warn(line_number_, "not valid JSON, line skipped");
    return;
  }
  const nlohmann::json* text = text_field("text");
  const nlohmann::json* prompt = text_field("prompt");
  const nlohmann::json* response = text_field("response");
  if (text == nullptr && (prompt == nullptr || response == nullptr)) {
    Warn(line_number_,
         "expected {\"text\": ...} or {\"prompt\": ..., \"response\": ...}, "
         "line skipped");
    return;
  }
  if (!InSplit(line_number_)) return;
  if (text != nullptr) {
    AddText(text->get<std::string>());
  } else {
    AddExample(prompt->get<std::string>(), response->get<std::string>());
  }
}

void DataStream::AddText(std::string_view text) {
  absl::StatusOr<std::vector<int32_t>> tokens = tokenizer_.Encode(text);
  if (!tokens.ok()) {
    Warn(line_number_, std::string(tokens.status().message()));
    return;
  }
  if (epoch_ == 0) ++counts_.documents;
  if (record_set_ != nullptr) {
    tokens->push_back(options_.eos_token);
    AppendToRecord(*tokens, 0);
    return;
  }
  pending_.insert(pending_.end(), tokens->begin(), tokens->end());
  pending_.push_back(options_.eos_token);
  const auto length = static_cast<size_t>(options_.seq_len);
  while (pending_.size() >= length + 1) {
    Sequence sequence;
    sequence.tokens.assign(pending_.begin(),
                           pending_.begin() + static_cast<std::ptrdiff_t>(length));
    sequence.targets.assign(pending_.begin() + 1,
                            pending_.begin() + static_cast<std::ptrdiff_t>(length) + 1);
    packed_.push_back(std::move(sequence));
    pending_.erase(pending_.begin(), pending_.begin() + static_cast<std::ptrdiff_t>(length));
  }
}

void DataStream::AddExample(std::string_view prompt, std::string_view response) {
  absl::StatusOr<std::vector<int32_t>> prompt_tokens = tokenizer_.Encode(prompt);
  absl::StatusOr<std::vector<int32_t>> example =
      EncodeExample(tokenizer_, prompt, response, options_.eos_token);
  if (!prompt_tokens.ok() || !example.ok()) {
    Warn(line_number_, "cannot tokenize, line skipped");
    return;
  }
  std::vector<int32_t> all = *std::move(example);
  const auto prompt_length = static_cast<int64_t>(prompt_tokens->size());
  if (record_set_ != nullptr) {
    // A record keeps its whole response, over as many windows as it takes.
    if (epoch_ == 0) ++counts_.sft_examples;
    AppendToRecord(all, prompt_length);
    return;
  }
  if (static_cast<int64_t>(all.size()) > options_.seq_len + 1) {
    all.resize(static_cast<size_t>(options_.seq_len + 1));
  }
  if (prompt_length + 1 >= static_cast<int64_t>(all.size())) {
    Warn(line_number_, "the prompt fills the whole sequence, example skipped");
    return;
  }
  Sequence sequence;
  const auto length = static_cast<int64_t>(all.size()) - 1;
  for (int64_t t = 0; t < length; ++t) {
    sequence.tokens.push_back(all[static_cast<size_t>(t)]);
    // Position t predicts token t + 1, which carries loss only inside the response.
    sequence.targets.push_back(t + 1 >= prompt_length ? all[static_cast<size_t>(t + 1)] : -1);
  }
  if (epoch_ == 0) ++counts_.sft_examples;
  examples_.push_back(std::move(sequence));
}

void DataStream::BucketExamples(bool flush) {
  const auto pool = static_cast<size_t>(kBucketPoolBatches * options_.batch_size);
  if (examples_.empty() || (!flush && examples_.size() < pool)) return;
  std::stable_sort(examples_.begin(), examples_.end(),
                   [](const auto& a, const auto& b) { return a.tokens.size() < b.tokens.size(); });
  std::vector<std::vector<Sequence>> groups;
  const auto batch = static_cast<size_t>(options_.batch_size);
  for (size_t first = 0; first < examples_.size(); first += batch) {
    const size_t last = std::min(examples_.size(), first + batch);
    groups.emplace_back(
        std::make_move_iterator(examples_.begin() + static_cast<std::ptrdiff_t>(first)),
        std::make_move_iterator(examples_.begin() + static_cast<std::ptrdiff_t>(last)));
  }
  examples_.clear();
  if (split_ == Split::kTrain) std::shuffle(groups.begin(), groups.end(), random_);
  for (auto& group : groups) example_batches_.push_back(std::move(group));
}

bool DataStream::TakeBatch(Batch& batch, bool flush) {
  BucketExamples(flush);
  std::vector<Sequence> rows;
  if (!example_batches_.empty()) {
    rows = std::move(example_batches_.front());
    example_batches_.pop_front();
  } else {
    const auto wanted = static_cast<size_t>(options_.batch_size);
    const size_t buffered =
        split_ == Split::kTrain ? static_cast<size_t>(kShuffleBufferBatches) * wanted : wanted;
    if (!packed_.empty() && (flush || packed_.size() >= buffered)) {
      while (rows.size() < wanted && !packed_.empty()) {
        size_t pick = 0;
        if (split_ == Split::kTrain) pick = random_() % packed_.size();
        rows.push_back(std::move(packed_[pick]));
        packed_.erase(packed_.begin() + static_cast<std::ptrdiff_t>(pick));
      }
    } else if (flush && split_ == Split::kValidation && pending_.size() >= 2) {
      // The validation tail: one last, shorter sequence so no held-out token is lost.
      Sequence tail;
      tail.tokens.assign(pending_.begin(), pending_.end() - 1);
      tail.targets.assign(pending_.begin() + 1, pending_.end());
      pending_.clear();
      rows.push_back(std::move(tail));
    } else {
      return false;
    }
  }
  size_t longest = 0;
  for (const Sequence& row : rows) longest = std::max(longest, row.tokens.size());
  batch.batch = static_cast<int64_t>(rows.size());
  batch.seq_len = static_cast<int64_t>(longest);
  batch.tokens.assign(rows.size() * longest, options_.eos_token);
  batch.targets.assign(rows.size() * longest, -1);
  batch.predictions = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    std::copy(rows[r].tokens.begin(), rows[r].tokens.end(),
              batch.tokens.begin() + static_cast<std::ptrdiff_t>(r * longest));
    std::copy(rows[r].targets.begin(), rows[r].targets.end(),
              batch.targets.begin() + static_cast<std::ptrdiff_t>(r * longest));
    for (const int32_t target : rows[r].targets) batch.predictions += target >= 0 ? 1 : 0;
  }
  ++yielded_this_epoch_;
  return true;
}

absl::StatusOr<bool> DataStream::Next(Batch& batch) {
  for (;;) {
    if (TakeBatch(batch, /*flush=*/false)) return true;
    if (Fill()) continue;
    // Every file of this epoch is read: hand out what is still buffered.
    if (TakeBatch(batch, /*flush=*/true)) return true;
    if (split_ == Split::kValidation) return false;
    if (yielded_this_epoch_ == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          root_.string(), " yields no training batches (", counts_.documents, " documents, ",
          counts_.sft_examples, " examples; too little text for seq_len ", options_.seq_len, "?)"));
    }
    ++epoch_;
    yielded_this_epoch_ = 0;
    next_file_ = 0;
    std::shuffle(order_.begin(), order_.end(), random_);
  }
}

absl::StatusOr<std::vector<int32_t>> EncodeExample(const Tokenizer& tokenizer,
                                                   std::string_view prompt,
                                                   std::string_view response, int32_t eos_token) {
  absl::StatusOr<std::vector<int32_t>> tokens = tokenizer.Encode(prompt);
  if (!tokens.ok()) return tokens.status();
  absl::StatusOr<std::vector<int32_t>> response_tokens = tokenizer.Encode(response);
  if (!response_tokens.ok()) return response_tokens.status();
  tokens->insert(tokens->end(), response_tokens->begin(), response_tokens->end());
  tokens->push_back(eos_token);
  return tokens;
}

absl::StatusOr<std::vector<int32_t>> EncodeChat(const Tokenizer& tokenizer,
                                                std::span<const ChatMessage> messages,
                                                int32_t eos_token) {
  if (messages.empty()) return absl::InvalidArgumentError("the conversation has no messages");
  std::vector<int32_t> tokens;
  // The text of the user turn being gathered (system messages and user messages so far).
  std::string asking;
  bool has_user_turn = false;
  for (size_t i = 0; i < messages.size(); ++i) {
    const ChatMessage& message = messages[i];
    const auto join = [&asking](std::string_view text) {
      if (!asking.empty()) asking += "\n\n";
      asking += text;
    };
    if (message.role == "system") {
      join(message.content);
    } else if (message.role == "user") {
      join(message.content);
      has_user_turn = true;
    } else if (message.role == "assistant") {
      if (!has_user_turn) {
        return absl::InvalidArgumentError(
            absl::StrCat("message ", i, " is the assistant's with no user turn before it"));
      }
      absl::StatusOr<std::vector<int32_t>> example =
          EncodeExample(tokenizer, asking, message.content, eos_token);
      if (!example.ok()) return example.status();
      tokens.insert(tokens.end(), example->begin(), example->end());
      asking.clear();
      has_user_turn = false;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("message ", i, " has role \"", message.role,
                                                     "\"; roles are system, user and assistant"));
    }
  }
  if (!has_user_turn) {
    return absl::InvalidArgumentError("the conversation must end with a user message");
  }
  absl::StatusOr<std::vector<int32_t>> question = tokenizer.Encode(asking);
  if (!question.ok()) return question.status();
  tokens.insert(tokens.end(), question->begin(), question->end());
  return tokens;
}

}  // namespace fedmoe::model
