// reblur_deblur: deblur a video, a camera or a folder of images with a deblurring module
// exported by `reblur-export --to torchscript`, without Python (LibTorch + OpenCV).
//
//   reblur_deblur MODEL.ts INPUT OUTPUT [--device cpu|cuda] [--frames N] [--threads N]
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
// Errors (missing or wrong model, unreadable input) are one line on stderr, exit status 1.

#include <ATen/Parallel.h>
#include <opencv2/core.hpp>
#include <opencv2/imgcodecs.hpp>
#include <opencv2/imgproc.hpp>
#include <opencv2/videoio.hpp>
#include <torch/cuda.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <regex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

namespace fs = std::filesystem;

namespace {

const char* const kUsage =
    "usage: reblur_deblur MODEL.ts INPUT OUTPUT [--device cpu|cuda] [--frames N] [--threads N]";
const char* const kMetadata = "reblur_deploy.json";  // written by reblur-export into the archive
const std::vector<std::string> kImageSuffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif",
                                                 ".tiff", ".webp"};

// A failure the user can act on; main prints it as one line.
struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Options {
  std::string model, input, output, device = "cpu";
  long frames = -1;  // at most this many frames (a camera runs until then); -1: all
  int threads = 0;   // 0: LibTorch's default (all cores)
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

Model load_model(const std::string& path, const torch::Device& device) {
  if (!fs::is_regular_file(path)) throw Failure("cannot read the model " + path + ": no such file");
  std::unordered_map<std::string, std::string> extra{{kMetadata, ""}};
  Model model;
  model.device = device;
  try {
    model.module = torch::jit::load(path, device, extra);
  } catch (const c10::Error& e) {
    throw Failure(path + " is not a TorchScript model from reblur-export --to torchscript (" +
                  first_line(e.what_without_backtrace()) + ")");
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
// before it is complete.
class Output {
 public:
  explicit Output(const fs::path& path) : path_(path) {
    const std::string suffix = lower_suffix(path);
    video_ = suffix == ".avi" || suffix == ".mp4" || suffix == ".mov" || suffix == ".mkv";
    if (!video_) {
      fs::create_directories(path);
    } else if (!path.parent_path().empty()) {
      fs::create_directories(path.parent_path());
    }
  }
  ~Output() {
    if (writer_.isOpened()) writer_.release();
    if (!finished_ && !temporary_.empty()) fs::remove(temporary_);
  }

  void write(const cv::Mat& frame, const std::string& name, double fps) {
    if (!video_) {
      const fs::path target = path_ / (fs::path(name).stem().string() + ".png");
      const fs::path part = path_ / ("." + target.filename().string() + ".part.png");
      if (!cv::imwrite(part.string(), frame)) throw Failure("cannot write " + target.string());
      fs::rename(part, target);
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
  bool video_ = false, finished_ = false;
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

// Calls fn(frame, name, fps) for every frame of the input; returns the number of frames.
template <typename Fn>
long for_each_frame(const Options& options, Fn fn) {
  long count = 0;
  if (!is_camera(options.input) && fs::is_directory(options.input)) {
    for (const fs::path& path : images_in(options.input)) {
      if (options.frames >= 0 && count >= options.frames) break;
      const cv::Mat frame = cv::imread(path.string(), cv::IMREAD_COLOR);
      if (frame.empty()) throw Failure("cannot read the image " + path.string());
      fn(frame, path.filename().string(), 0.0);
      ++count;
    }
    return count;
  }
  cv::VideoCapture capture;
  if (is_camera(options.input)) {
    capture.open(std::stoi(options.input));
  } else if (fs::is_regular_file(options.input)) {
    capture.open(options.input);
  } else {
    throw Failure("no such input " + options.input + " (a folder, a video or a camera index)");
  }
  if (!capture.isOpened()) throw Failure("cannot open " + options.input);
  const double fps = capture.get(cv::CAP_PROP_FPS);
  cv::Mat frame;
  while ((options.frames < 0 || count < options.frames) && capture.read(frame)) {
    char name[32];
    std::snprintf(name, sizeof name, "frame_%06ld", count);
    fn(frame, name, fps);
    ++count;
  }
  if (count == 0) throw Failure("no frames in " + options.input);
  return count;
}

// ------------------------------------------------------------------------------------- main

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
      options.frames = std::stol(value());
    } else if (arg == "--threads") {
      options.threads = std::stoi(value());
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
  Output output(options.output);
  double seconds = 0.0;
  const long frames = for_each_frame(options, [&](const cv::Mat& frame, const std::string& name,
                                                  double fps) {
    const auto start = std::chrono::steady_clock::now();
    const cv::Mat sharp = deblur(model, frame);
    seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    output.write(sharp, name, fps);
  });
  output.finish();
  std::fprintf(stderr, "%ld frame(s), %.3f s in the network and its pre/post-processing "
               "(%.2f frames/s) -> %s\n", frames, seconds, frames / std::max(seconds, 1e-9),
               options.output.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
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
