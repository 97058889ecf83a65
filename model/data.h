// Private training data: a directory of .txt, .md and .jsonl files (DESIGN §7), streamed from
// disk into batches.
//
// - Text files (.txt, .md) are split into paragraphs (blank-line separated); each paragraph is
//   a pre-training document. A JSONL line {"text": ...} is one too. Documents are tokenized,
//   separated by EOS and packed into sequences of seq_len tokens.
// - A JSONL line {"prompt": ..., "response": ...} is a supervised example: prompt + response +
//   EOS, with the loss on the response (and EOS) only. Examples are grouped by length into
//   dynamic batches padded to their longest member.
// - Each document goes to the training or the validation split by a hash of where it is
//   (file and line), so the split is stable across runs and needs no pass over the data.
// - File order is shuffled per epoch and sequences pass through a shuffle buffer, both from the
//   seed: the same seed gives the same batches.
// - A binary file, a line of invalid UTF-8 or a malformed JSONL line is skipped, counted and
//   reported through the warning callback as "file:line: why". It never stops the run.
#ifndef FEDMOE_MODEL_DATA_H_
#define FEDMOE_MODEL_DATA_H_

#include <cstdint>
#include <deque>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "model/tokenizer.h"

namespace fedmoe::model {

// A supervised example's tokens, as training reads a {"prompt", "response"} line: the prompt's,
// the response's (each encoded alone) and EOS. Also the layout the chat endpoint of `serve`
// renders a conversation in, so a model fine-tuned on such lines is asked the way it learned.
absl::StatusOr<std::vector<int32_t>> EncodeExample(const Tokenizer& tokenizer,
                                                   std::string_view prompt,
                                                   std::string_view response, int32_t eos_token);

struct ChatMessage {
  // "system", "user" or "assistant".
  std::string role;
  std::string content;
};

// A conversation as the tokens that ask for the assistant's next reply: each finished exchange
// (a user turn, then the assistant's) as a supervised example, then the last user turn's tokens.
// A system message's content goes, with a blank line, before the next user turn's. Consecutive
// user turns are joined by a blank line. InvalidArgument naming the fault: no messages, an
// unknown role, an assistant turn with no user turn before it, or a conversation that does not
// end with a user turn.
absl::StatusOr<std::vector<int32_t>> EncodeChat(const Tokenizer& tokenizer,
                                                std::span<const ChatMessage> messages,
                                                int32_t eos_token);

struct DataOptions {
  int64_t seq_len = 128;
  int64_t batch_size = 8;
  // The share of documents held out for validation.
  double validation_fraction = 0.05;
  uint64_t seed = 0;
  // Separates packed documents and ends supervised examples. Required.
  int32_t eos_token = -1;
  // Called once per skipped file or line, in the first epoch only.
  std::function<void(std::string_view)> warn;
};

struct DataCounts {
  int64_t files = 0;
  int64_t documents = 0;
  int64_t sft_examples = 0;
  int64_t skipped_files = 0;
  int64_t skipped_lines = 0;
};

// A [batch, seq_len] block of tokens and next-token targets (−1: no loss at that position).
struct Batch {
  int64_t batch = 0;
  int64_t seq_len = 0;
  std::vector<int32_t> tokens;
  std::vector<int32_t> targets;
  int64_t predictions = 0;
};

enum class Split { kTrain, kValidation };

// DP-SGD's unit of privacy, the thing whose presence the guarantee hides:
//   kLine       one line of a .txt/.md file, or one JSONL line;
//   kParagraph  one blank-line-separated paragraph of a .txt/.md file, or one JSONL line;
//   kFile       one whole file.
enum class RecordUnit { kLine, kParagraph, kFile };
absl::StatusOr<RecordUnit> ParseRecordUnit(std::string_view name);
std::string_view RecordUnitName(RecordUnit unit);

// One record's tokens in order, and for each position whether predicting its token carries
// loss (not a prompt's tokens, nor the record's first token, which nothing precedes). Text ends
// with EOS; a file record's documents follow each other as packing would place them.
struct Record {
  std::vector<int32_t> tokens;
  std::vector<uint8_t> loss;

  // Positions with loss.
  int64_t predictions() const;
  // Windows of seq_len inputs it needs: ⌈(tokens − 1)/seq_len⌉.
  int64_t windows(int64_t seq_len) const;
};

struct RecordSet {
  RecordUnit unit = RecordUnit::kParagraph;
  std::vector<Record> records;
  DataCounts counts;
  // Records with no position to learn from (a prompt with an empty response, a lone token).
  int64_t empty_records = 0;
};

// The training split of a directory as whole records, in memory: DP-SGD samples records, not
// sequences. Documents go to the validation split as DataStream sends them (so validation
// still reads what training does not), and a file record is its file's training documents.
// Skips and warnings as DataStream's.
absl::StatusOr<RecordSet> ReadRecords(const std::filesystem::path& directory,
                                      const Tokenizer& tokenizer, const DataOptions& options,
                                      RecordUnit unit);

class DataStream {
 public:
  // Lists the directory (recursively; other extensions are ignored). InvalidArgument when it has
  // no .txt, .md or .jsonl file, or options are out of range.
  static absl::StatusOr<std::unique_ptr<DataStream>> Open(const std::filesystem::path& directory,
                                                          const Tokenizer& tokenizer, Split split,
                                                          DataOptions options);

  // The training split cycles through epochs forever; the validation split returns false after
  // one pass. FailedPrecondition when a whole epoch yields no data for this split.
  absl::StatusOr<bool> Next(Batch& batch);

  // What the first epoch saw (complete once it has been read).
  const DataCounts& counts() const { return counts_; }
  int64_t epoch() const { return epoch_; }

 private:
  struct Sequence {
    std::vector<int32_t> tokens;
    std::vector<int32_t> targets;
  };

  friend absl::StatusOr<RecordSet> ReadRecords(const std::filesystem::path& directory,
                                               const Tokenizer& tokenizer,
                                               const DataOptions& options, RecordUnit unit);

  DataStream(std::vector<std::filesystem::path> files, std::filesystem::path root,
             const Tokenizer& tokenizer, Split split, DataOptions options);

  // Reads on until a batch is ready or the epoch ends. Returns false at the end of an epoch.
  bool Fill();
  bool OpenNextFile();
  void Warn(int64_t line, std::string_view why);
  bool InSplit(int64_t line) const;
  void AddText(std::string_view text);
  void AddExample(std::string_view prompt, std::string_view response);
  void ReadJsonLine(const std::string& line);
  void FinishParagraph();
  void BucketExamples(bool flush);
  // Record mode (ReadRecords): documents join the open record instead of the packer.
  void AppendToRecord(std::span<const int32_t> tokens, int64_t loss_from);
  void CloseRecord();
  bool TakeBatch(Batch& batch, bool flush);

  std::vector<std::filesystem::path> files_;
  std::filesystem::path root_;
  const Tokenizer& tokenizer_;
  Split split_;
  DataOptions options_;
  std::mt19937_64 random_;

  std::vector<size_t> order_;
  size_t next_file_ = 0;
  std::ifstream current_;
  std::string current_name_;
  bool current_is_jsonl_ = false;
  int64_t line_number_ = 0;
  std::string paragraph_;
  int64_t paragraph_line_ = 0;

  std::vector<int32_t> pending_;    // packed tokens not yet cut into a sequence
  std::vector<Sequence> packed_;    // the shuffle buffer of packed sequences
  std::vector<Sequence> examples_;  // supervised examples waiting to be bucketed
  std::deque<std::vector<Sequence>> example_batches_;
  int64_t epoch_ = 0;
  int64_t yielded_this_epoch_ = 0;
  DataCounts counts_;
  // Set in record mode only.
  RecordSet* record_set_ = nullptr;
  Record open_record_;
};

}  // namespace fedmoe::model

#endif  // FEDMOE_MODEL_DATA_H_
