// reblur_deblur: deblur a video, a camera or a folder of images with a deblurring module
// exported by `reblur-export --to torchscript`, without Python (LibTorch + OpenCV).
//
//   reblur_deblur MODEL.ts INPUT OUTPUT [--device cpu|cuda] [--frames N] [--threads N]
//                 [--allow-truncated]
//
// INPUT: a folder of images, a video file, or a camera index (0, 1, ...).
// OUTPUT: a folder (one PNG per frame: the input's file names for a folder of images,
// frame_000000.png ... otherwise) or a video file (.avi: MJPG, .mp4/.mov: MPEG-4 part 2, at the
// input's frame rate). Every file is written under a temporary name and renamed when complete.
//
// Each frame goes through the contract of docs/DEPLOY.md: BGR → RGB, uint8 → float32 / 255,
// reflect padding (bottom and right) to the model's size_divisor, NCHW, the network, crop back,
// clamp to [0, 1], × 255 and round, RGB → BGR. The model's size_divisor and role come from the
// reblur_deploy.json metadata that reblur-export writes into the TorchScript archive.
//
// Errors (missing or wrong model, unreadable input, a truncated or corrupt video) are one line
// on stderr, exit status 1 (2 for a bad option). A folder run goes on past an image it cannot
// read and lists those at the end (exit status 1). A video that stops before the frame count
// its container gives is refused, and nothing is written; --allow-truncated keeps the frames
// before the damage, with a warning.

#include <ATen/Parallel.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>
#include <opencv2/videoio/registry.hpp>
#include <torch/cuda.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <regex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace fs = std::filesystem;

namespace {

const char* const kUsage =
    "usage: reblur_deblur MODEL.ts INPUT OUTPUT [--device cpu|cuda] [--frames N] [--threads N] "
    "[--allow-truncated]";
const char* const kMetadata = "reblur_deploy.json";  // written by reblur-export into the archive
const std::vector<std::string> kImageSuffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif",
                                                 ".tiff", ".webp"};

// A failure the user can act on; main prints it as one line.
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string model, input, output, device = "cpu";
  long frames = -1;              // at most this many frames (a camera runs until then); -1: all
  int threads = 0;               // 0: LibTorch's default (all cores)
  bool allow_truncated = false;  // a damaged video: keep the frames before the damage
};

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

std::string lower_suffix(const fs::path& path) {
  std::string suffix = path.extension().string();
  std::transform(suffix.begin(), suffix.end(), suffix.begin(), ::tolower);
  return suffix;
}

// The value of "key" in the flat JSON object reblur-export writes: a string or a number.
std::string json_value(const std::string& json, const std::string& key) {
  std::smatch match;
  const std::regex pattern("\"" + key + "\"\\s*:\\s*(\"([^\"]*)\"|([-0-9.eE+]+))");
  if (!std::regex_search(json, match, pattern)) return "";
  return match[2].matched ? match[2].str() : match[3].str();
}

// ---------------------------------------------------------------------------------- the model

struct Model {
  torch::jit::Module module;
  torch::Device device = torch::kCPU;
  int size_divisor = 1;
};

// What a file that is not TorchScript holds, when it is one of the files users hand over by
// mistake (the other exports of reblur-export, the weight files); "" otherwise.
std::string other_format(const std::string& path) {
  unsigned char head[9] = {};
  std::ifstream(path, std::ios::binary).read(reinterpret_cast<char*>(head), sizeof head);
  // ONNX: a protobuf ModelProto starts with ir_version (field 1, a small number), then the next
  // field's tag (producer_name, producer_version, domain, model_version, doc_string, graph or
  // opset_import).
  const std::string next_tags = "\x12\x1a\x22\x28\x32\x3a\x42";
  if (head[0] == 0x08 && head[1] >= 1 && head[1] < 0x80 &&
      next_tags.find(static_cast<char>(head[2])) != std::string::npos) {
    return "an ONNX model";
  }
  // safetensors: the length of its JSON header (8 bytes, little-endian), then the header.
  std::uint64_t header = 0;
  for (int i = 7; i >= 0; --i) header = header << 8 | head[i];
  if (head[8] == '{' && header <= fs::file_size(path) - 8) return "a safetensors weight file";
  // Damaged files of these formats, and those recognisable by their suffix only.
  const std::unordered_map<std::string, std::string> by_suffix{
      {".onnx", "an ONNX model"},
      {".safetensors", "a safetensors weight file"},
      {".pt2", "an ExportedProgram or AOTInductor package (.pt2)"},
      {".ep", "a Torch-TensorRT program (.ep)"},
      {".engine", "a TensorRT engine"}};
  const auto found = by_suffix.find(lower_suffix(path));
  return found == by_suffix.end() ? "" : found->second;
}

// Why torch::jit::load refused a file, in a few words. TorchScript files are zip archives;
// PyTorch's own message goes on with advice about checkpoints, so only its first sentence
// is kept.
std::string not_torchscript_reason(const std::string& path, const c10::Error& error) {
  char magic[4] = {};
  std::ifstream(path, std::ios::binary).read(magic, sizeof magic);
  if (fs::file_size(path) == 0) return "the file is empty";
  if (std::string(magic, 4) != std::string("PK\x03\x04", 4)) {
    return "not a zip archive, as TorchScript files are";
  }
  std::string reason = first_line(error.what_without_backtrace());
  reason = reason.substr(0, reason.find(". "));
  const std::string prefix = "PytorchStreamReader ";
  if (reason.rfind(prefix, 0) == 0) reason = reason.substr(prefix.size());
  return reason;
}

Model load_model(const std::string& path, const torch::Device& device) {
  if (!fs::is_regular_file(path)) throw Failure("cannot read the model " + path + ": no such file");
  std::unordered_map<std::string, std::string> extra{{kMetadata, ""}};
  Model model;
  model.device = device;
  try {
    model.module = torch::jit::load(path, device, extra);
  } catch (const c10::Error& e) {
    const std::string format = other_format(path);
    if (!format.empty()) {
      throw Failure(path + " is " + format + "; the C++ program runs TorchScript files from "
                    "`reblur-export --to torchscript`");
    }
    throw Failure(path + " is not a TorchScript model (" + not_torchscript_reason(path, e) +
                  "); export one with `reblur-export --to torchscript`");
  }
  const std::string& meta = extra[kMetadata];
  if (meta.empty()) {
    throw Failure(path + " has no " + kMetadata + ": export it with reblur-export --to torchscript");
  }
  const std::string role = json_value(meta, "role");
  if (role != "deblur") {
    throw Failure(path + " holds the " + (role.empty() ? "unknown" : role) +
                  " module: export the deblurring module (reblur-export --module deblur)");
  }
  model.size_divisor = std::max(1, std::atoi(json_value(meta, "size_divisor").c_str()));
  model.module.eval();
  return model;
}

// One BGR uint8 frame through the network (docs/DEPLOY.md, "Pre- and post-processing").
cv::Mat deblur(Model& model, const cv::Mat& bgr) {
  cv::Mat rgb, padded, f32;
  cv::cvtColor(bgr, rgb, cv::COLOR_BGR2RGB);
  const int h = rgb.rows, w = rgb.cols, d = model.size_divisor;
  const int ph = (d - h % d) % d, pw = (d - w % d) % d;
  // PyTorch's "reflect" is OpenCV's BORDER_REFLECT_101; a side no longer than its pad
  // cannot be reflected and is replicated instead (as the Python pipeline does).
  const int border = (ph < h && pw < w) ? cv::BORDER_REFLECT_101 : cv::BORDER_REPLICATE;
  cv::copyMakeBorder(rgb, padded, 0, ph, 0, pw, border);
  padded.convertTo(f32, CV_32FC3, 1.0 / 255.0);
  const int hp = h + ph, wp = w + pw;

  torch::Tensor input = torch::empty({1, 3, hp, wp}, torch::kFloat32);
  std::vector<cv::Mat> planes;  // views of the tensor's three planes: HWC → CHW in one split
  for (int c = 0; c < 3; ++c) {
    planes.emplace_back(hp, wp, CV_32F, input.data_ptr<float>() + c * hp * wp);
  }
  cv::split(f32, planes);

  torch::Tensor output;
  {
    c10::InferenceMode guard;
    output = model.module.forward({input.to(model.device)}).toTensor();
    output = output.to(torch::kCPU, torch::kFloat32).clamp(0.0, 1.0).contiguous();
  }
  std::vector<cv::Mat> out_planes;
  for (int c = 0; c < 3; ++c) {
    out_planes.emplace_back(hp, wp, CV_32F, output.data_ptr<float>() + c * hp * wp);
  }
  cv::Mat merged, sharp8, sharp_bgr;
  cv::merge(out_planes, merged);
  merged(cv::Rect(0, 0, w, h)).convertTo(sharp8, CV_8UC3, 255.0);  // rounds half to even
  cv::cvtColor(sharp8, sharp_bgr, cv::COLOR_RGB2BGR);
  return sharp_bgr;
}

// ----------------------------------------------------------------------------------- outputs

// Frames go to a folder of PNGs or to one video file; nothing appears under a final name
// before it is complete. The frames of one video are one result: when the run fails before
// finish(), the PNGs it wrote go too (all_or_nothing), as the video file would.
class Output {
 public:
  Output(const fs::path& path, bool all_or_nothing) : path_(path), all_or_nothing_(all_or_nothing) {
    const std::string suffix = lower_suffix(path);
    video_ = suffix == ".avi" || suffix == ".mp4" || suffix == ".mov" || suffix == ".mkv";
    if (!video_) {
      created_ = fs::create_directories(path);
    } else if (!path.parent_path().empty()) {
      fs::create_directories(path.parent_path());
    }
  }
  ~Output() {
    if (writer_.isOpened()) writer_.release();
    if (finished_) return;
    std::error_code ignored;  // a destructor must not throw
    if (!temporary_.empty()) fs::remove(temporary_, ignored);
    if (all_or_nothing_) {
      for (const fs::path& png : written_) fs::remove(png, ignored);
      if (created_) fs::remove(path_, ignored);  // only if empty
    }
  }

  void write(const cv::Mat& frame, const std::string& name, double fps) {
    if (!video_) {
      const fs::path target = path_ / (fs::path(name).stem().string() + ".png");
      const fs::path part = path_ / ("." + target.filename().string() + ".part.png");
      if (!cv::imwrite(part.string(), frame)) throw Failure("cannot write " + target.string());
      fs::rename(part, target);
      written_.push_back(target);
      return;
    }
    if (!writer_.isOpened()) {
      temporary_ = path_.parent_path() / ("." + path_.filename().string() + ".part" +
                                          path_.extension().string());
      const int fourcc = lower_suffix(path_) == ".avi" ? cv::VideoWriter::fourcc('M', 'J', 'P', 'G')
                                                       : cv::VideoWriter::fourcc('m', 'p', '4', 'v');
      if (!writer_.open(temporary_.string(), fourcc, fps > 0 ? fps : 30.0, frame.size())) {
        throw Failure("cannot write the video " + path_.string());
      }
    }
    writer_.write(frame);
  }

  void finish() {
    if (writer_.isOpened()) {
      writer_.release();
      fs::rename(temporary_, path_);
    }
    finished_ = true;
  }

 private:
  fs::path path_, temporary_;
  bool all_or_nothing_, video_ = false, created_ = false, finished_ = false;
  std::vector<fs::path> written_;  // the PNGs of this run
  cv::VideoWriter writer_;
};

// ------------------------------------------------------------------------------------ inputs

std::vector<fs::path> images_in(const fs::path& folder) {
  std::vector<fs::path> images;
  for (const auto& entry : fs::directory_iterator(folder)) {
    const std::string suffix = lower_suffix(entry.path());
    const bool image = std::find(kImageSuffixes.begin(), kImageSuffixes.end(), suffix) !=
                       kImageSuffixes.end();
    if (entry.is_regular_file() && image && entry.path().filename().string()[0] != '.') {
      images.push_back(entry.path());
    }
  }
  std::sort(images.begin(), images.end());
  if (images.empty()) throw Failure("no images in " + folder.string());
  return images;
}

bool is_camera(const std::string& input) {
  return !input.empty() && std::all_of(input.begin(), input.end(), ::isdigit);
}

bool is_folder(const std::string& input) { return !is_camera(input) && fs::is_directory(input); }

// What for_each_frame went through.
struct Tally {
  long frames = 0;                    // frames deblurred
  long inputs = 0;                    // images taken from a folder
  std::vector<std::string> failures;  // why some of them could not be read, one line each
};

// OpenCV does not tell a read error from the end of a video, so a video file that stops before
// the frame count its container gives is taken as truncated or corrupt. The count is exact
// where the container indexes its frames (MP4, MOV, AVI); elsewhere (MKV, WebM, ...) OpenCV
// estimates it from the container's duration, which covers the audio too, and audio often
// ends a little after the video: there up to 0.2 s short counts as complete. The error says
// that nothing was written: the caller's Output removes what it wrote.
void check_complete(const Options& options, long frames, double promised, double fps) {
  if (options.frames >= 0 && frames >= options.frames) return;  // stopped by --frames
  const long count = std::lround(promised);
  const std::string suffix = lower_suffix(options.input);
  const bool indexed = suffix == ".mp4" || suffix == ".mov" || suffix == ".m4v" || suffix == ".avi";
  const long slack = indexed ? 0 : std::lround(0.2 * fps);
  if (count <= 0 || frames >= count - slack) return;  // count <= 0: unknown
  const std::string of = std::to_string(count);
  if (frames == 0) {
    throw Failure(options.input + ": the video is truncated or corrupt: none of its " + of +
                  " frames could be read");
  }
  const std::string damage = options.input + ": the video is truncated or corrupt after frame " +
                             std::to_string(frames) + " of " + of;
  if (!options.allow_truncated) {
    throw Failure(damage + "; nothing was written (--allow-truncated keeps the frames before "
                  "the damage)");
  }
  std::cerr << "warning: " << damage << "; kept the " << frames << " frames before it\n";
}

// Calls fn(frame, name, fps) for every frame of the input.
template <typename Fn>
Tally for_each_frame(const Options& options, Fn fn) {
  Tally tally;
  if (is_folder(options.input)) {
    for (const fs::path& path : images_in(options.input)) {
      if (options.frames >= 0 && tally.inputs >= options.frames) break;
      ++tally.inputs;
      const cv::Mat frame = cv::imread(path.string(), cv::IMREAD_COLOR);
      if (frame.empty()) {  // one bad file must not cost the others: listed at the end
        tally.failures.push_back("cannot read the image " + path.string());
        continue;
      }
      fn(frame, path.filename().string(), 0.0);
      ++tally.frames;
    }
    return tally;
  }
  cv::VideoCapture capture;
  if (is_camera(options.input)) {
    capture.open(std::stoi(options.input));
  } else if (fs::is_regular_file(options.input)) {
    // FFmpeg alone when OpenCV has it: a file FFmpeg refuses would go on to GStreamer, which
    // waits forever on a truncated MP4.
    const bool ffmpeg = cv::videoio_registry::hasBackend(cv::CAP_FFMPEG);
    capture.open(options.input, ffmpeg ? cv::CAP_FFMPEG : cv::CAP_ANY);
  } else {
    throw Failure("no such input " + options.input + " (a folder, a video or a camera index)");
  }
  if (!capture.isOpened()) throw Failure("cannot open " + options.input);
  const double fps = capture.get(cv::CAP_PROP_FPS);
  const double promised = capture.get(cv::CAP_PROP_FRAME_COUNT);
  cv::Mat frame;
  while ((options.frames < 0 || tally.frames < options.frames) && capture.read(frame)) {
    char name[32];
    std::snprintf(name, sizeof name, "frame_%06ld", tally.frames);
    fn(frame, name, fps);
    ++tally.frames;
  }
  if (!is_camera(options.input)) check_complete(options, tally.frames, promised, fps);
  if (tally.frames == 0) throw Failure("no frames in " + options.input);
  return tally;
}

// ------------------------------------------------------------------------------------- main

// The value of a numeric option: all of the text a whole number, at least min (std::stoi
// alone takes "-3" and "5x").
int number(const std::string& option, const std::string& text, int min) {
  std::size_t used = 0;
  long n = min - 1;
  try {
    n = std::stol(text, &used);
  } catch (const std::exception&) {  // not a number, or out of range
  }
  if (used != text.size() || n < min || n > std::numeric_limits<int>::max()) {
    throw std::invalid_argument(option + " needs a whole number >= " + std::to_string(min) +
                                ", got '" + text + "'");
  }
  return static_cast<int>(n);
}

Options parse(int argc, char** argv) {
  Options options;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "-h" || arg == "--help") {
      std::cout << kUsage << "\n";
      std::exit(0);
    } else if (arg == "--device") {
      options.device = value();
    } else if (arg == "--frames") {
      options.frames = number(arg, value(), 1);
    } else if (arg == "--threads") {
      options.threads = number(arg, value(), 0);  // 0: LibTorch's default
    } else if (arg == "--allow-truncated") {
      options.allow_truncated = true;
    } else if (!arg.empty() && arg[0] == '-' && !is_camera(arg)) {
      throw std::invalid_argument("unknown option " + arg);
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.size() != 3) throw std::invalid_argument("expected MODEL INPUT OUTPUT");
  options.model = positional[0];
  options.input = positional[1];
  options.output = positional[2];
  return options;
}

int run(const Options& options) {
  if (options.threads > 0) at::set_num_threads(options.threads);
  if (options.device != "cpu" && !torch::cuda::is_available()) {
    throw Failure("--device " + options.device + ": this LibTorch sees no CUDA GPU");
  }
  Model model = load_model(options.model, torch::Device(options.device));
  // A folder's images are results of their own; a video's frames are one.
  Output output(options.output, /*all_or_nothing=*/!is_folder(options.input));
  double seconds = 0.0;
  const Tally tally = for_each_frame(options, [&](const cv::Mat& frame, const std::string& name,
                                                  double fps) {
    const auto start = std::chrono::steady_clock::now();
    const cv::Mat sharp = deblur(model, frame);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    output.write(sharp, name, fps);
  });
  output.finish();
  std::fprintf(stderr, "%ld frame(s), %.3f s in the network and its pre/post-processing "
               "(%.2f frames/s) -> %s\n", tally.frames, seconds,
               tally.frames / std::max(seconds, 1e-9), options.output.c_str());
  if (tally.failures.empty()) return 0;
  std::cerr << "error: " << tally.failures.size() << " of " << tally.inputs << " inputs failed\n";
  for (const std::string& failure : tally.failures) std::cerr << "error: " << failure << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  // FFmpeg's own messages about a damaged video would come before the line that says so (a
  // user's OPENCV_FFMPEG_LOGLEVEL still wins).
  setenv("OPENCV_FFMPEG_LOGLEVEL", "-8", /*overwrite=*/0);  // -8: AV_LOG_QUIET
  Options options;
  try {
    options = parse(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << " (" << kUsage << ")\n";
    return 2;
  }
  try {
    return run(options);
  } catch (const Failure& e) {
    std::cerr << "error: " << e.what() << "\n";
  } catch (const c10::Error& e) {
    std::cerr << "error: " << first_line(e.what_without_backtrace()) << "\n";
  } catch (const cv::Exception& e) {
    std::cerr << "error: OpenCV: " << first_line(e.err) << "\n";
  } catch (const std::exception& e) {
    std::cerr << "error: " << first_line(e.what()) << "\n";
  }
  return 1;
}
