// rwkv_edge_jni.cc: the JNI glue between librwkv_edge (rwkv_edge.h) and the Kotlin class
// rwkv.edge.RwkvEdge (runtime/cpp/android/RwkvEdge.kt), whose native functions all live in the
// object rwkv.edge.RwkvEdgeNative.
//
// Conventions:
//   * Handles are the C pointers as jlong (0: none). The sampler handle is a JniSampler, which
//     remembers its vocabulary size so that a logits array of another length is refused here.
//   * Every text crosses as UTF-8 bytes (byte[]), never through GetStringUTFChars / NewStringUTF:
//     those use Java's modified UTF-8, which differs from UTF-8 for NUL and for characters outside
//     the BMP (emoji), and token bytes may be part of a character. Strings the library returns
//     (error messages, names) become Java Strings through new String(bytes, UTF_8).
//   * A failed call throws rwkv.edge.RwkvEdgeException(code, message) with the library's status and
//     rwkv_edge_last_error(); a problem found here (a NUL byte inside a path, a short array) throws it
//     with RWKV_EDGE_ERR_ARGUMENT. Nothing is thrown over an exception already pending.
//   * Local references made per token (the byte[] passed to the listener) are deleted at once, so a
//     long generation never fills the local reference table; the classes and methods used are
//     looked up once in JNI_OnLoad (where the app's class loader is the current one) and kept as
//     global references.
//   * Every call runs on the calling Java thread (the listener too); nothing here starts a thread.

#include <jni.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <vector>

#include "rwkv_edge.h"

namespace {

constexpr jint kJniVersion = JNI_VERSION_1_6;

struct JniSampler {
  rwkv_edge_sampler* sampler;
  int32_t vocab_size;
};

// Looked up once in JNI_OnLoad.
jclass g_exception_class = nullptr;  // rwkv.edge.RwkvEdgeException
jmethodID g_exception_init = nullptr;  // (int code, String message)
jclass g_string_class = nullptr;
jmethodID g_string_init = nullptr;  // String(byte[], Charset)
jobject g_utf8 = nullptr;  // StandardCharsets.UTF_8
jmethodID g_on_token = nullptr;  // TokenListener.onToken(int, byte[]) -> boolean

template <typename T>
T* FromHandle(jlong handle) {
  return reinterpret_cast<T*>(static_cast<intptr_t>(handle));
}

template <typename T>
jlong ToHandle(T* pointer) {
  return static_cast<jlong>(reinterpret_cast<intptr_t>(pointer));
}

// A Java String of `len` UTF-8 bytes (malformed bytes become U+FFFD); nullptr with an exception pending.
jstring Utf8String(JNIEnv* env, const char* text, size_t len) {
  if (len > static_cast<size_t>(std::numeric_limits<jsize>::max())) len = std::numeric_limits<jsize>::max();
  jbyteArray bytes = env->NewByteArray(static_cast<jsize>(len));
  if (bytes == nullptr) return nullptr;
  env->SetByteArrayRegion(bytes, 0, static_cast<jsize>(len), reinterpret_cast<const jbyte*>(text));
  auto* string = static_cast<jstring>(env->NewObject(g_string_class, g_string_init, bytes, g_utf8));
  env->DeleteLocalRef(bytes);
  return string;
}

void Throw(JNIEnv* env, int code, const char* message) {
  if (env->ExceptionCheck()) return;  // keep the exception already pending (the listener's, an OOM)
  jstring text = Utf8String(env, message, std::strlen(message));
  if (text == nullptr) return;
  auto* exception = static_cast<jthrowable>(env->NewObject(g_exception_class, g_exception_init, code, text));
  if (exception != nullptr) {
    env->Throw(exception);
    env->DeleteLocalRef(exception);
  }
  env->DeleteLocalRef(text);
}

void ThrowArgument(JNIEnv* env, const std::string& message) {
  Throw(env, RWKV_EDGE_ERR_ARGUMENT, message.c_str());
}

// Throws the library's error for `status`; true where there was one.
bool Failed(JNIEnv* env, rwkv_edge_status status) {
  if (status == RWKV_EDGE_OK) return false;
  Throw(env, status, rwkv_edge_last_error());
  return true;
}

// The bytes of a Java byte[] (null: empty).
std::string Bytes(JNIEnv* env, jbyteArray array) {
  std::string bytes;
  if (array == nullptr) return bytes;
  bytes.resize(static_cast<size_t>(env->GetArrayLength(array)));
  env->GetByteArrayRegion(array, 0, static_cast<jsize>(bytes.size()), reinterpret_cast<jbyte*>(bytes.data()));
  return bytes;
}

// The UTF-8 bytes of `array` as a C string; false (exception thrown) where they hold a NUL byte.
bool CString(JNIEnv* env, jbyteArray array, const char* what, std::string* out) {
  *out = Bytes(env, array);
  if (out->find('\0') != std::string::npos) {
    ThrowArgument(env, std::string(what) + " contains a NUL byte");
    return false;
  }
  return true;
}

jbyteArray NewBytes(JNIEnv* env, const char* data, size_t len) {
  if (len > static_cast<size_t>(std::numeric_limits<jsize>::max())) {
    ThrowArgument(env, "more bytes than a Java array holds");
    return nullptr;
  }
  jbyteArray array = env->NewByteArray(static_cast<jsize>(len));
  if (array != nullptr) {
    env->SetByteArrayRegion(array, 0, static_cast<jsize>(len), reinterpret_cast<const jbyte*>(data));
  }
  return array;
}

jfloatArray NewFloats(JNIEnv* env, const float* data, size_t len) {
  if (len > static_cast<size_t>(std::numeric_limits<jsize>::max())) {
    ThrowArgument(env, "more values than a Java array holds");
    return nullptr;
  }
  jfloatArray array = env->NewFloatArray(static_cast<jsize>(len));
  if (array != nullptr) env->SetFloatArrayRegion(array, 0, static_cast<jsize>(len), data);
  return array;
}

std::vector<float> Floats(JNIEnv* env, jfloatArray array) {
  std::vector<float> values(static_cast<size_t>(env->GetArrayLength(array)));
  env->GetFloatArrayRegion(array, 0, static_cast<jsize>(values.size()), values.data());
  return values;
}

// False (exception thrown) where a handle or array argument is null: the Kotlin class never passes
// one, but a stray call must not reach the library with it.
bool Present(JNIEnv* env, const void* value, const char* what) {
  if (value != nullptr) return true;
  ThrowArgument(env, std::string(what) + " is null (closed?)");
  return false;
}

// The state passed to the C callback during rwkv_edge_generate.
struct Listener {
  JNIEnv* env;
  jobject listener;  // a TokenListener, or null
  bool failed;       // the listener threw, or its byte[] could not be made: stop, the exception pending
};

int OnToken(int32_t token, const char* text, size_t len, void* user_data) {
  auto* l = static_cast<Listener*>(user_data);
  if (l->failed) return 1;
  if (l->listener == nullptr) return 0;
  JNIEnv* env = l->env;
  jbyteArray bytes = NewBytes(env, text, len);
  if (bytes == nullptr) {
    l->failed = true;
    return 1;
  }
  jboolean go_on = env->CallBooleanMethod(l->listener, g_on_token, static_cast<jint>(token), bytes);
  env->DeleteLocalRef(bytes);
  if (env->ExceptionCheck()) {
    l->failed = true;
    return 1;
  }
  return go_on ? 0 : 1;
}

jclass GlobalClass(JNIEnv* env, const char* name) {
  jclass local = env->FindClass(name);
  if (local == nullptr) return nullptr;
  auto* global = static_cast<jclass>(env->NewGlobalRef(local));
  env->DeleteLocalRef(local);
  return global;
}

}  // namespace

extern "C" {

JNIEXPORT jint JNI_OnLoad(JavaVM* vm, void*) {
  JNIEnv* env = nullptr;
  if (vm->GetEnv(reinterpret_cast<void**>(&env), kJniVersion) != JNI_OK) return JNI_ERR;
  g_exception_class = GlobalClass(env, "rwkv/edge/RwkvEdgeException");
  g_string_class = GlobalClass(env, "java/lang/String");
  jclass charsets = env->FindClass("java/nio/charset/StandardCharsets");
  jclass listener = env->FindClass("rwkv/edge/TokenListener");
  if (g_exception_class == nullptr || g_string_class == nullptr || charsets == nullptr || listener == nullptr) {
    return JNI_ERR;  // the NoClassDefFoundError stays pending: System.loadLibrary throws it
  }
  g_exception_init = env->GetMethodID(g_exception_class, "<init>", "(ILjava/lang/String;)V");
  g_string_init = env->GetMethodID(g_string_class, "<init>", "([BLjava/nio/charset/Charset;)V");
  g_on_token = env->GetMethodID(listener, "onToken", "(I[B)Z");
  jfieldID utf8 = env->GetStaticFieldID(charsets, "UTF_8", "Ljava/nio/charset/Charset;");
  if (g_exception_init == nullptr || g_string_init == nullptr || g_on_token == nullptr || utf8 == nullptr) {
    return JNI_ERR;
  }
  jobject charset = env->GetStaticObjectField(charsets, utf8);
  g_utf8 = env->NewGlobalRef(charset);
  env->DeleteLocalRef(charset);
  env->DeleteLocalRef(charsets);
  env->DeleteLocalRef(listener);
  return g_utf8 != nullptr ? kJniVersion : JNI_ERR;
}

JNIEXPORT void JNI_OnUnload(JavaVM* vm, void*) {
  JNIEnv* env = nullptr;
  if (vm->GetEnv(reinterpret_cast<void**>(&env), kJniVersion) != JNI_OK) return;
  for (jobject global : {static_cast<jobject>(g_exception_class), static_cast<jobject>(g_string_class), g_utf8}) {
    if (global != nullptr) env->DeleteGlobalRef(global);
  }
}

// ---- the model ----------------------------------------------------------------------------------

JNIEXPORT jlong JNICALL Java_rwkv_edge_RwkvEdgeNative_open(JNIEnv* env, jclass, jbyteArray dir, jint threads,
                                                            jbyteArray expect_sha256) {
  if (rwkv_edge_abi_version() != RWKV_EDGE_ABI_VERSION) {
    std::string message = "librwkv_edge has ABI version " + std::to_string(rwkv_edge_abi_version()) +
                          "; librwkv_edge_jni was built for version " + std::to_string(RWKV_EDGE_ABI_VERSION);
    Throw(env, RWKV_EDGE_ERR_UNSUPPORTED, message.c_str());
    return 0;
  }
  std::string path, pin;
  if (!Present(env, dir, "the bundle folder") || !CString(env, dir, "the bundle folder", &path) ||
      !CString(env, expect_sha256, "expectSha256", &pin)) {
    return 0;
  }
  rwkv_edge_open_options options = rwkv_edge_default_open_options();
  options.num_threads = threads;
  options.expect_sha256 = expect_sha256 != nullptr ? pin.c_str() : nullptr;
  rwkv_edge_model* model = nullptr;
  if (Failed(env, rwkv_edge_model_open(path.c_str(), &options, &model))) return 0;
  return ToHandle(model);
}

JNIEXPORT void JNICALL Java_rwkv_edge_RwkvEdgeNative_closeModel(JNIEnv*, jclass, jlong model) {
  rwkv_edge_model_close(FromHandle<rwkv_edge_model>(model));
}

JNIEXPORT jint JNICALL Java_rwkv_edge_RwkvEdgeNative_vocabSize(JNIEnv* env, jclass, jlong handle) {
  auto* model = FromHandle<rwkv_edge_model>(handle);
  return Present(env, model, "the model") ? rwkv_edge_vocab_size(model) : 0;
}

JNIEXPORT jstring JNICALL Java_rwkv_edge_RwkvEdgeNative_architecture(JNIEnv* env, jclass, jlong handle) {
  auto* model = FromHandle<rwkv_edge_model>(handle);
  if (!Present(env, model, "the model")) return nullptr;
  const char* name = rwkv_edge_architecture(model);
  return Utf8String(env, name, std::strlen(name));
}

JNIEXPORT jint JNICALL Java_rwkv_edge_RwkvEdgeNative_endOfText(JNIEnv* env, jclass, jlong handle) {
  auto* model = FromHandle<rwkv_edge_model>(handle);
  return Present(env, model, "the model") ? rwkv_edge_end_of_text(model) : -1;
}

JNIEXPORT jstring JNICALL Java_rwkv_edge_RwkvEdgeNative_tokenizerName(JNIEnv* env, jclass, jlong handle) {
  auto* model = FromHandle<rwkv_edge_model>(handle);
  if (!Present(env, model, "the model")) return nullptr;
  const char* name = rwkv_edge_tokenizer_name(model);
  return Utf8String(env, name, std::strlen(name));
}

// ---- the tokenizer ------------------------------------------------------------------------------

JNIEXPORT jintArray JNICALL Java_rwkv_edge_RwkvEdgeNative_tokenize(JNIEnv* env, jclass, jlong handle,
                                                                    jbyteArray text) {
  auto* model = FromHandle<rwkv_edge_model>(handle);
  if (!Present(env, model, "the model") || !Present(env, text, "the text")) return nullptr;
  std::string bytes = Bytes(env, text);
  // Every token holds at least one byte, so the byte count is enough; the second call is there in
  // case a tokenizer ever says otherwise.
  std::vector<int32_t> ids(bytes.size());
  size_t count = 0;
  rwkv_edge_status status = rwkv_edge_tokenize(model, bytes.data(), bytes.size(), ids.data(), ids.size(), &count);
  if (status == RWKV_EDGE_ERR_ARGUMENT && count > ids.size()) {
    ids.resize(count);
    status = rwkv_edge_tokenize(model, bytes.data(), bytes.size(), ids.data(), ids.size(), &count);
  }
  if (Failed(env, status)) return nullptr;
  if (count > static_cast<size_t>(std::numeric_limits<jsize>::max())) {
    ThrowArgument(env, "more tokens than a Java array holds");
    return nullptr;
  }
  jintArray out = env->NewIntArray(static_cast<jsize>(count));
  if (out != nullptr) env->SetIntArrayRegion(out, 0, static_cast<jsize>(count), ids.data());
  return out;
}

JNIEXPORT jbyteArray JNICALL Java_rwkv_edge_RwkvEdgeNative_tokenBytes(JNIEnv* env, jclass, jlong handle, jint id) {
  auto* model = FromHandle<rwkv_edge_model>(handle);
  if (!Present(env, model, "the model")) return nullptr;
  const char* bytes = nullptr;
  size_t len = 0;
  if (Failed(env, rwkv_edge_token_bytes(model, id, &bytes, &len))) return nullptr;
  return NewBytes(env, bytes, len);
}

JNIEXPORT jbyteArray JNICALL Java_rwkv_edge_RwkvEdgeNative_detokenize(JNIEnv* env, jclass, jlong handle,
                                                                       jintArray ids) {
  auto* model = FromHandle<rwkv_edge_model>(handle);
  if (!Present(env, model, "the model") || !Present(env, ids, "the token ids")) return nullptr;
  std::vector<jint> tokens(static_cast<size_t>(env->GetArrayLength(ids)));
  env->GetIntArrayRegion(ids, 0, static_cast<jsize>(tokens.size()), tokens.data());
  std::string text;
  for (jint id : tokens) {
    const char* bytes = nullptr;
    size_t len = 0;
    if (Failed(env, rwkv_edge_token_bytes(model, id, &bytes, &len))) return nullptr;
    text.append(bytes, len);
  }
  return NewBytes(env, text.data(), text.size());
}

// ---- sessions -----------------------------------------------------------------------------------

JNIEXPORT jlong JNICALL Java_rwkv_edge_RwkvEdgeNative_newSession(JNIEnv* env, jclass, jlong handle) {
  auto* model = FromHandle<rwkv_edge_model>(handle);
  if (!Present(env, model, "the model")) return 0;
  rwkv_edge_session* session = nullptr;
  if (Failed(env, rwkv_edge_session_new(model, &session))) return 0;
  return ToHandle(session);
}

JNIEXPORT void JNICALL Java_rwkv_edge_RwkvEdgeNative_freeSession(JNIEnv*, jclass, jlong session) {
  rwkv_edge_session_free(FromHandle<rwkv_edge_session>(session));
}

JNIEXPORT void JNICALL Java_rwkv_edge_RwkvEdgeNative_reset(JNIEnv* env, jclass, jlong handle) {
  auto* session = FromHandle<rwkv_edge_session>(handle);
  if (Present(env, session, "the session")) Failed(env, rwkv_edge_session_reset(session));
}

JNIEXPORT void JNICALL Java_rwkv_edge_RwkvEdgeNative_prefill(JNIEnv* env, jclass, jlong handle, jintArray tokens) {
  auto* session = FromHandle<rwkv_edge_session>(handle);
  if (!Present(env, session, "the session") || !Present(env, tokens, "the tokens")) return;
  std::vector<int32_t> ids(static_cast<size_t>(env->GetArrayLength(tokens)));
  env->GetIntArrayRegion(tokens, 0, static_cast<jsize>(ids.size()), ids.data());
  Failed(env, rwkv_edge_prefill(session, ids.data(), ids.size()));
}

JNIEXPORT void JNICALL Java_rwkv_edge_RwkvEdgeNative_step(JNIEnv* env, jclass, jlong handle, jint token) {
  auto* session = FromHandle<rwkv_edge_session>(handle);
  if (Present(env, session, "the session")) Failed(env, rwkv_edge_step(session, token));
}

JNIEXPORT jfloatArray JNICALL Java_rwkv_edge_RwkvEdgeNative_logits(JNIEnv* env, jclass, jlong model_handle,
                                                                    jlong session_handle) {
  auto* model = FromHandle<rwkv_edge_model>(model_handle);
  auto* session = FromHandle<rwkv_edge_session>(session_handle);
  if (!Present(env, model, "the model") || !Present(env, session, "the session")) return nullptr;
  const float* logits = nullptr;
  if (Failed(env, rwkv_edge_logits(session, &logits))) return nullptr;
  return NewFloats(env, logits, static_cast<size_t>(rwkv_edge_vocab_size(model)));
}

JNIEXPORT jfloatArray JNICALL Java_rwkv_edge_RwkvEdgeNative_getState(JNIEnv* env, jclass, jlong model_handle,
                                                                      jlong session_handle) {
  auto* model = FromHandle<rwkv_edge_model>(model_handle);
  auto* session = FromHandle<rwkv_edge_session>(session_handle);
  if (!Present(env, model, "the model") || !Present(env, session, "the session")) return nullptr;
  std::vector<float> values(rwkv_edge_state_size(model));
  if (Failed(env, rwkv_edge_state_get(session, values.data(), values.size()))) return nullptr;
  return NewFloats(env, values.data(), values.size());
}

JNIEXPORT void JNICALL Java_rwkv_edge_RwkvEdgeNative_setState(JNIEnv* env, jclass, jlong handle, jfloatArray values) {
  auto* session = FromHandle<rwkv_edge_session>(handle);
  if (!Present(env, session, "the session") || !Present(env, values, "the state")) return;
  std::vector<float> state = Floats(env, values);
  Failed(env, rwkv_edge_state_set(session, state.data(), state.size()));
}

JNIEXPORT void JNICALL Java_rwkv_edge_RwkvEdgeNative_saveState(JNIEnv* env, jclass, jlong handle, jbyteArray path) {
  auto* session = FromHandle<rwkv_edge_session>(handle);
  std::string file;
  if (!Present(env, session, "the session") || !Present(env, path, "the path") ||
      !CString(env, path, "the path", &file)) {
    return;
  }
  Failed(env, rwkv_edge_state_save(session, file.c_str()));
}

JNIEXPORT void JNICALL Java_rwkv_edge_RwkvEdgeNative_loadState(JNIEnv* env, jclass, jlong handle, jbyteArray path) {
  auto* session = FromHandle<rwkv_edge_session>(handle);
  std::string file;
  if (!Present(env, session, "the session") || !Present(env, path, "the path") ||
      !CString(env, path, "the path", &file)) {
    return;
  }
  Failed(env, rwkv_edge_state_load(session, file.c_str()));
}

// ---- the sampler --------------------------------------------------------------------------------

JNIEXPORT jlong JNICALL Java_rwkv_edge_RwkvEdgeNative_newSampler(JNIEnv* env, jclass, jdouble temperature,
                                                                  jdouble top_p, jint top_k, jdouble presence_penalty,
                                                                  jdouble frequency_penalty, jdouble penalty_decay,
                                                                  jlong seed, jint vocab_size) {
  rwkv_edge_sampler_params params = rwkv_edge_default_sampler_params();
  params.temperature = temperature;
  params.top_p = top_p;
  params.top_k = top_k;
  params.presence_penalty = presence_penalty;
  params.frequency_penalty = frequency_penalty;
  params.penalty_decay = penalty_decay;
  params.seed = static_cast<uint64_t>(seed);  // a Java long's 64 bits, read as unsigned
  rwkv_edge_sampler* sampler = nullptr;
  if (Failed(env, rwkv_edge_sampler_new(&params, vocab_size, &sampler))) return 0;
  auto* wrapped = new (std::nothrow) JniSampler{sampler, vocab_size};
  if (wrapped == nullptr) {
    rwkv_edge_sampler_free(sampler);
    Throw(env, RWKV_EDGE_ERR_MEMORY, "out of memory");
    return 0;
  }
  return ToHandle(wrapped);
}

JNIEXPORT void JNICALL Java_rwkv_edge_RwkvEdgeNative_freeSampler(JNIEnv*, jclass, jlong handle) {
  auto* sampler = FromHandle<JniSampler>(handle);
  if (sampler == nullptr) return;
  rwkv_edge_sampler_free(sampler->sampler);
  delete sampler;
}

JNIEXPORT jint JNICALL Java_rwkv_edge_RwkvEdgeNative_sample(JNIEnv* env, jclass, jlong handle, jfloatArray logits) {
  auto* sampler = FromHandle<JniSampler>(handle);
  if (!Present(env, sampler, "the sampler") || !Present(env, logits, "the logits")) return -1;
  jsize len = env->GetArrayLength(logits);
  if (len != sampler->vocab_size) {
    ThrowArgument(env, std::to_string(len) + " logits given; the sampler draws from " +
                           std::to_string(sampler->vocab_size));
    return -1;
  }
  std::vector<float> values = Floats(env, logits);
  int32_t token = -1;
  if (Failed(env, rwkv_edge_sample(sampler->sampler, values.data(), &token))) return -1;
  return token;
}

// ---- generation ---------------------------------------------------------------------------------

JNIEXPORT jint JNICALL Java_rwkv_edge_RwkvEdgeNative_generate(JNIEnv* env, jclass, jlong model_handle,
                                                               jlong session_handle, jlong sampler_handle,
                                                               jbyteArray prompt, jint max_tokens, jobjectArray stop,
                                                               jint end_token, jobject listener) {
  auto* model = FromHandle<rwkv_edge_model>(model_handle);
  auto* session = FromHandle<rwkv_edge_session>(session_handle);
  auto* sampler = FromHandle<JniSampler>(sampler_handle);
  if (!Present(env, model, "the model") || !Present(env, session, "the session") ||
      !Present(env, sampler, "the sampler")) {
    return 0;
  }
  if (sampler->vocab_size != rwkv_edge_vocab_size(model)) {  // it would read past the session's logits
    ThrowArgument(env, "the sampler draws from " + std::to_string(sampler->vocab_size) + " tokens; the model has " +
                           std::to_string(rwkv_edge_vocab_size(model)));
    return 0;
  }
  std::string text = Bytes(env, prompt);
  std::vector<std::string> stops(stop != nullptr ? static_cast<size_t>(env->GetArrayLength(stop)) : 0);
  for (size_t i = 0; i < stops.size(); ++i) {
    auto* bytes = static_cast<jbyteArray>(env->GetObjectArrayElement(stop, static_cast<jsize>(i)));
    bool ok = Present(env, bytes, "a stop sequence") && CString(env, bytes, "a stop sequence", &stops[i]);
    env->DeleteLocalRef(bytes);
    if (!ok) return 0;
  }
  std::vector<const char*> stop_pointers;
  for (const std::string& s : stops) stop_pointers.push_back(s.c_str());
  rwkv_edge_generate_options options = rwkv_edge_default_generate_options();
  options.max_tokens = max_tokens;
  options.stop = stop_pointers.empty() ? nullptr : stop_pointers.data();
  options.stop_count = stop_pointers.size();
  options.end_token = end_token;
  Listener state{env, listener, false};
  int32_t generated = 0;
  rwkv_edge_status status = rwkv_edge_generate(session, sampler->sampler, text.data(), text.size(), &options,
                                               OnToken, &state, &generated);
  if (state.failed) return generated;  // the listener's exception is pending: it reaches the caller
  Failed(env, status);
  return generated;
}

}  // extern "C"
