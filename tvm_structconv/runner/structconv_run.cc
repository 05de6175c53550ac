/*
 * structconv_run: run a tvm_structconv deployment bundle with the TVM runtime.
 *
 * The bundle's model.json names the compiled library and the model's inputs and outputs.
 * The library is a Relax VM executable exported with `export_library`; it is run through the
 * TVM runtime's C++ API, exactly as `tvm.relax.VirtualMachine` does it in Python:
 *
 *   Module lib = ffi::Module::LoadFromFile("model.so");
 *   Module vm  = lib->GetFunction("vm_load_executable", true)().cast<Module>();
 *   vm->GetFunction("vm_initialization", true)(kDLCPU, 0, kPooled);   // device, id, allocator
 *   Any out    = vm->GetFunction("main", true)(inputs...);              // Tensor or tuple of them
 *
 * Usage: structconv_run [options]
 *   --model PATH     model.json of the bundle (default: model.json)
 *   --input FILE     raw little-endian bytes of one input, in the order of model.json
 *                    (repeat for several inputs; without any, inputs are zeros: timing only)
 *   --output FILE    write every output's raw bytes, back to back, in model.json's order
 *   --expect FILE    compare the outputs (float32) with these raw bytes; exit 1 if they differ
 *   --rtol X         largest accepted error relative to the expected output's largest
 *                    magnitude (default 1e-4)
 *   --repeat N       timed runs (default 10); --warmup N untimed runs first (default 2)
 * Threads: TVM_NUM_THREADS (default: all cores).
 */
#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/container/map.h>
#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/dtype.h>
#include <tvm/ffi/extra/json.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

namespace ffi = tvm::ffi;
using ffi::Tensor;

namespace {

constexpr int kPooledAllocator = 2;  // tvm::runtime::memory::AllocatorType::kPooled
constexpr size_t kAlignment = 64;    // what TVM kernels may assume of their arguments

/*! \brief Host memory for input tensors, aligned as TVM's own allocator aligns it. */
struct AlignedCPUAlloc {
  void AllocData(DLTensor* tensor) {
    size_t size = (ffi::GetDataSize(*tensor) + kAlignment - 1) / kAlignment * kAlignment;
    tensor->data = std::aligned_alloc(kAlignment, std::max(size, kAlignment));
    if (tensor->data == nullptr) throw std::bad_alloc();
  }
  void FreeData(DLTensor* tensor) { std::free(tensor->data); }
};

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  DLDataType dtype;

  size_t bytes() const {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    return ffi::GetDataSize(static_cast<size_t>(numel), dtype);
  }
};

struct Options {
  std::string model = "model.json";
  std::vector<std::string> inputs;
  std::string output;
  std::string expect;
  double rtol = 1e-4;
  int repeat = 10;
  int warmup = 2;
};

[[noreturn]] void Fail(const std::string& message) { throw std::runtime_error(message); }

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) Fail("cannot read " + path);
  std::ostringstream buffer;
  buffer << file.rdbuf();
  return buffer.str();
}

std::string Dirname(const std::string& path) {
  size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

Options ParseArguments(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") {
      std::cout << "usage: structconv_run [--model model.json] [--input FILE]... "
                   "[--output FILE] [--expect FILE] [--rtol X] [--repeat N] [--warmup N]\n";
      std::exit(0);
    }
    if (i + 1 >= argc) Fail("missing value after " + flag);
    std::string value = argv[++i];
    if (flag == "--model") {
      options.model = value;
    } else if (flag == "--input") {
      options.inputs.push_back(value);
    } else if (flag == "--output") {
      options.output = value;
    } else if (flag == "--expect") {
      options.expect = value;
    } else if (flag == "--rtol") {
      options.rtol = std::stod(value);
    } else if (flag == "--repeat") {
      options.repeat = std::max(1, std::stoi(value));
    } else if (flag == "--warmup") {
      options.warmup = std::max(0, std::stoi(value));
    } else {
      Fail("unknown option " + flag);
    }
  }
  return options;
}

std::vector<TensorSpec> ReadSpecs(const ffi::json::Object& model, const char* key) {
  std::vector<TensorSpec> specs;
  for (const ffi::Any& item : model.at(key).cast<ffi::json::Array>()) {
    auto entry = item.cast<ffi::json::Object>();
    TensorSpec spec;
    spec.name = std::string(entry.at("name").cast<ffi::String>());
    for (const ffi::Any& dim : entry.at("shape").cast<ffi::json::Array>()) {
      spec.shape.push_back(dim.cast<int64_t>());
    }
    spec.dtype = ffi::StringToDLDataType(entry.at("dtype").cast<ffi::String>());
    specs.push_back(spec);
  }
  return specs;
}

/*! \brief The function ``name`` of ``module`` (or of a module it imports). */
ffi::Function Require(const ffi::Module& module, const char* name, const std::string& what) {
  ffi::Optional<ffi::Function> function = module->GetFunction(name, true);
  if (!function.has_value()) Fail(what + " has no function " + name);
  return *function;
}

/*! \brief The VM's result (a Tensor, or nested tuples of them) as a flat list. */
void Flatten(const ffi::Any& result, std::vector<Tensor>* out) {
  if (auto tensor = result.as<Tensor>()) {
    out->push_back(*tensor);
    return;
  }
  if (auto tuple = result.as<ffi::Array<ffi::Any>>()) {
    for (const ffi::Any& item : *tuple) Flatten(item, out);
    return;
  }
  Fail("main returned something that is neither a tensor nor a tuple: " + result.GetTypeKey());
}

std::vector<char> ToBytes(const Tensor& tensor, const TensorSpec& spec) {
  const DLTensor& array = *tensor.GetDLTensorPtr();
  if (array.device.device_type != kDLCPU || !ffi::IsContiguous(array)) {
    Fail("output " + spec.name + " is not a contiguous CPU tensor");
  }
  if (ffi::GetDataSize(array) != spec.bytes()) {
    Fail("output " + spec.name + " has " + std::to_string(ffi::GetDataSize(array)) +
         " bytes, expected " + std::to_string(spec.bytes()));
  }
  const char* data = static_cast<const char*>(array.data) + array.byte_offset;
  return std::vector<char>(data, data + spec.bytes());
}

/*! \brief Largest error relative to the largest expected magnitude, over float32 outputs. */
double CompareFloat32(const std::vector<char>& got, const std::string& expected_bytes) {
  if (got.size() != expected_bytes.size()) {
    Fail("--expect file has " + std::to_string(expected_bytes.size()) + " bytes, the outputs " +
         std::to_string(got.size()));
  }
  size_t count = got.size() / sizeof(float);
  const float* a = reinterpret_cast<const float*>(got.data());
  const float* b = reinterpret_cast<const float*>(expected_bytes.data());
  double error = 0.0, scale = 0.0;
  for (size_t i = 0; i < count; ++i) {
    error = std::max(error, std::fabs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::fabs(static_cast<double>(b[i])));
  }
  return scale > 0.0 ? error / scale : error;
}

int Run(const Options& options) {
  auto model = ffi::json::Parse(ReadFile(options.model)).cast<ffi::json::Object>();
  std::string library = Dirname(options.model) + "/" +
                        std::string(model.at("library").cast<ffi::String>());
  std::vector<TensorSpec> input_specs = ReadSpecs(model, "inputs");
  std::vector<TensorSpec> output_specs = ReadSpecs(model, "outputs");
  if (!options.inputs.empty() && options.inputs.size() != input_specs.size()) {
    Fail("the model has " + std::to_string(input_specs.size()) + " inputs, got " +
         std::to_string(options.inputs.size()) + " --input files");
  }

  // Load the library and create a Relax VM on the CPU, as tvm.relax.VirtualMachine does.
  DLDevice cpu{kDLCPU, 0};
  ffi::Module lib = ffi::Module::LoadFromFile(library);
  ffi::Module vm = Require(lib, "vm_load_executable", library + " (not a Relax VM executable?)")()
                       .cast<ffi::Module>();
  Require(vm, "vm_initialization", "the VM")(static_cast<int>(cpu.device_type), cpu.device_id,
                                             kPooledAllocator);
  ffi::Function main_fn = Require(vm, "main", "the model");

  std::vector<Tensor> arguments;
  for (size_t i = 0; i < input_specs.size(); ++i) {
    const TensorSpec& spec = input_specs[i];
    Tensor tensor = Tensor::FromNDAlloc(AlignedCPUAlloc(), ffi::Shape(spec.shape), spec.dtype, cpu);
    std::string bytes = options.inputs.empty() ? std::string(spec.bytes(), '\0')
                                               : ReadFile(options.inputs[i]);
    if (bytes.size() != spec.bytes()) {
      Fail("input " + spec.name + ": " + options.inputs[i] + " has " +
           std::to_string(bytes.size()) + " bytes, expected " + std::to_string(spec.bytes()));
    }
    std::memcpy(tensor.data_ptr(), bytes.data(), bytes.size());
    arguments.push_back(tensor);
  }
  if (options.inputs.empty()) std::cout << "note: no --input given; inputs are zeros\n";

  std::vector<ffi::AnyView> views(arguments.begin(), arguments.end());
  auto call = [&]() {
    ffi::Any result;
    main_fn.CallPacked(views.data(), static_cast<int32_t>(views.size()), &result);
    return result;
  };
  ffi::Any result;
  for (int i = 0; i < options.warmup; ++i) result = call();
  std::vector<double> times_ms;
  for (int i = 0; i < options.repeat; ++i) {
    auto start = std::chrono::steady_clock::now();
    result = call();
    auto stop = std::chrono::steady_clock::now();
    times_ms.push_back(std::chrono::duration<double, std::milli>(stop - start).count());
  }

  std::vector<Tensor> outputs;
  Flatten(result, &outputs);
  if (outputs.size() != output_specs.size()) {
    Fail("main returned " + std::to_string(outputs.size()) + " outputs, model.json lists " +
         std::to_string(output_specs.size()));
  }
  std::vector<char> all_bytes;
  for (size_t i = 0; i < outputs.size(); ++i) {
    std::vector<char> bytes = ToBytes(outputs[i], output_specs[i]);
    all_bytes.insert(all_bytes.end(), bytes.begin(), bytes.end());
  }
  if (!options.output.empty()) {
    std::ofstream file(options.output, std::ios::binary);
    file.write(all_bytes.data(), static_cast<std::streamsize>(all_bytes.size()));
    if (!file) Fail("cannot write " + options.output);
    std::cout << "wrote " << options.output << " (" << outputs.size() << " outputs, "
              << all_bytes.size() << " bytes)\n";
  }

  std::sort(times_ms.begin(), times_ms.end());
  double median = times_ms.size() % 2 ? times_ms[times_ms.size() / 2]
                                      : 0.5 * (times_ms[times_ms.size() / 2 - 1] +
                                               times_ms[times_ms.size() / 2]);
  std::printf("latency: median %.3f ms, min %.3f ms, max %.3f ms over %zu runs (%d warm-up)\n",
              median, times_ms.front(), times_ms.back(), times_ms.size(), options.warmup);

  if (!options.expect.empty()) {
    for (const TensorSpec& spec : output_specs) {
      if (spec.dtype.code != kDLFloat || spec.dtype.bits != 32 || spec.dtype.lanes != 1) {
        Fail("--expect compares float32 outputs only; " + spec.name + " is not float32");
      }
    }
    double error = CompareFloat32(all_bytes, ReadFile(options.expect));
    bool ok = error <= options.rtol;
    std::printf("%s: max error relative to the expected output's magnitude %.3e (rtol %.1e)\n",
                ok ? "OK" : "MISMATCH", error, options.rtol);
    return ok ? 0 : 1;
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return Run(ParseArguments(argc, argv));
  } catch (const std::exception& error) {
    std::cerr << "structconv_run: error: " << error.what() << "\n";
    return 2;
  }
}
