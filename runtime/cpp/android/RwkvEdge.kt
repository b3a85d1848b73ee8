// RwkvEdge.kt: the Kotlin face of librwkv_edge (rwkv_edge.h) for Android apps, through
// librwkv_edge_jni.so (runtime/cpp/jni). Copy this file into the app's sources (package rwkv.edge)
// and package librwkv_edge_jni.so, librwkv_edge.so and the TVM runtime libraries as jniLibs
// (docs/native-apps.md).
//
//   RwkvEdge.open(bundleDir, threads = 4).use { model ->
//       val reply = model.generate("User: hi\n\nAssistant:", maxTokens = 100,
//                                  sampler = SamplerParams(temperature = 1.0, topP = 0.7),
//                                  stop = listOf("\n\nUser:")) { piece -> print(piece) }
//       model.saveState(File(filesDir, "chat.state").path)
//   }
//
// An RwkvEdge is one opened bundle and one conversation (its session); use it from one thread at a
// time. Every failure of the library is an RwkvEdgeException carrying its code and one-line message.
package rwkv.edge

import java.io.ByteArrayOutputStream
import java.io.File

/** A failure of the runtime: [code] is one of the constants below (rwkv_edge_status), the message one line. */
class RwkvEdgeException(val code: Int, message: String) : RuntimeException(message) {
    /** The C name of [code], e.g. "RWKV_EDGE_ERR_BUNDLE". */
    val status: String
        get() = NAMES.getOrNull(code)?.let { "RWKV_EDGE_ERR_$it" } ?: "code $code"

    companion object {
        const val ARGUMENT = 1 // a bad argument: a token outside the vocabulary, a sampler setting, ...
        const val BUNDLE = 2 // the bundle fails a check: missing, truncated, tampered, another target, unpinned
        const val STATE = 3 // a state file or array of another format, model or shape
        const val UNSUPPORTED = 4 // not in this runtime (the 20B tokenizer, an image model, another ABI)
        const val IO = 5 // a file cannot be read or written
        const val RUNTIME = 6 // TVM failed to load or run the model
        const val MEMORY = 7 // out of memory
        private val NAMES = listOf(null, "ARGUMENT", "BUNDLE", "STATE", "UNSUPPORTED", "IO", "RUNTIME", "MEMORY")
    }
}

/**
 * Receives each generated token: its id and the UTF-8 bytes it releases (empty while text is held
 * back: part of a character, or what may begin a stop sequence). After the last token, text still
 * held comes once more with token -1. Return false to stop after this token.
 */
fun interface TokenListener {
    fun onToken(token: Int, text: ByteArray): Boolean
}

/** How the next token is drawn (rwkv_edge_sampler_params): the same draws as Python's Sampler for the same settings. */
data class SamplerParams(
    val temperature: Double = 1.0, // 0: greedy (argmax, lowest id on ties)
    val topP: Double = 0.85, // in (0, 1]
    val topK: Int = 0, // > 0: keep at most this many tokens first; 0: no limit
    val presencePenalty: Double = 0.0,
    val frequencyPenalty: Double = 0.0,
    val penaltyDecay: Double = 1.0, // in (0, 1]
    val seed: Long = 0, // its 64 bits are read as an unsigned number
) {
    companion object {
        @JvmField val GREEDY = SamplerParams(temperature = 0.0)
    }
}

/** A sampler with its random generator and penalty counts: it goes on from draw to draw (and generate to generate). */
class Sampler(params: SamplerParams, val vocabSize: Int) : AutoCloseable {
    private var handle: Long = with(params) {
        RwkvEdgeNative.newSampler(temperature, topP, topK, presencePenalty, frequencyPenalty, penaltyDecay, seed,
                                  vocabSize)
    }

    internal fun handle(): Long = handle.also { check(it != 0L) { "this Sampler is closed" } }

    /** One token id from [vocabSize] logits; counts it for the penalties. */
    fun sample(logits: FloatArray): Int = RwkvEdgeNative.sample(handle(), logits)

    override fun close() {
        if (handle != 0L) RwkvEdgeNative.freeSampler(handle)
        handle = 0
    }
}

/** An opened TVM bundle and one conversation with it. */
class RwkvEdge private constructor(private var model: Long, private var session: Long) : AutoCloseable {
    /** Rows of the model's embedding: token ids lie in [0, vocabSize). */
    val vocabSize: Int = RwkvEdgeNative.vocabSize(model)

    /** The manifest's architecture ("rwkv7", ...). */
    val architecture: String = RwkvEdgeNative.architecture(model)

    /** The bundle's tokenizer ("world", "bytes"; "20b" opens but does not tokenize). */
    val tokenizerName: String = RwkvEdgeNative.tokenizerName(model)

    /** The tokenizer's end-of-text token ("world": 0), or -1 where it has none ("bytes"). */
    val endOfText: Int = RwkvEdgeNative.endOfText(model)

    companion object {
        /**
         * Open the bundle folder [dir] (every file checked against its manifest before any code loads).
         * [threads]: the TVM thread pool's size (0: TVM's default; one pool per process, the last open sets it).
         * [expectSha256]: the 64 hex digits `rwkv-edge compile` printed, to refuse any other manifest.
         */
        @JvmStatic
        @JvmOverloads
        fun open(dir: String, threads: Int = 0, expectSha256: String? = null): RwkvEdge {
            val model = RwkvEdgeNative.open(utf8(dir), threads, expectSha256?.let(::utf8))
            val session = try {
                RwkvEdgeNative.newSession(model)
            } catch (e: Throwable) {
                RwkvEdgeNative.closeModel(model)
                throw e
            }
            return RwkvEdge(model, session)
        }

        @JvmStatic
        @JvmOverloads
        fun open(dir: File, threads: Int = 0, expectSha256: String? = null): RwkvEdge =
            open(dir.path, threads, expectSha256)

        private fun utf8(text: String): ByteArray = text.toByteArray(Charsets.UTF_8)
    }

    private fun model(): Long = model.also { check(it != 0L) { "this RwkvEdge is closed" } }

    private fun session(): Long = session.also { check(it != 0L) { "this RwkvEdge is closed" } }

    // ---- the tokenizer --------------------------------------------------------------------------

    fun tokenize(text: String): IntArray = RwkvEdgeNative.tokenize(model(), utf8(text))

    /** The bytes of token [id]: possibly part of a UTF-8 character, empty for end-of-text. */
    fun tokenBytes(id: Int): ByteArray = RwkvEdgeNative.tokenBytes(model(), id)

    /** The text of [ids] (bytes that are not UTF-8 become U+FFFD). */
    fun detokenize(ids: IntArray): String = String(RwkvEdgeNative.detokenize(model(), ids), Charsets.UTF_8)

    // ---- the session ----------------------------------------------------------------------------

    /** Feed [tokens] (at least one); the logits are then those after the last. */
    fun prefill(tokens: IntArray) = RwkvEdgeNative.prefill(session(), tokens)

    fun step(token: Int) = RwkvEdgeNative.step(session(), token)

    /** The logits after the last token fed (RwkvEdgeException STATE where none was fed since the start or reset()). */
    fun logits(): FloatArray = RwkvEdgeNative.logits(model(), session())

    /** Back to the model's initial state, with no logits. */
    fun reset() = RwkvEdgeNative.reset(session())

    /** The recurrent state: every tensor in the manifest's order, each C-contiguous, float32. */
    fun getState(): FloatArray = RwkvEdgeNative.getState(model(), session())

    /** Replace the state (the length getState() returns); the session then has no logits. */
    fun setState(values: FloatArray) = RwkvEdgeNative.setState(session(), values)

    /** Write the state, and the logits where there are some, to [path] (written beside it, then renamed into place). */
    fun saveState(path: String) = RwkvEdgeNative.saveState(session(), utf8(path))

    /** Read a state file saved from this model (RwkvEdgeException STATE otherwise, the session unchanged). */
    fun loadState(path: String) = RwkvEdgeNative.loadState(session(), utf8(path))

    // ---- generation -----------------------------------------------------------------------------

    /**
     * Prefill [prompt] (may be empty only where the session has logits: after loadState or an earlier
     * turn), then draw up to [maxTokens] tokens until [endToken] (not delivered; -1: none), a [stop] sequence (its
     * text not delivered) or the end. [onPiece] gets the text as it is released; returns all of it.
     * The session goes on from the last token delivered. [sampler] starts afresh for this call.
     */
    @JvmOverloads
    fun generate(prompt: String, maxTokens: Int = 200, sampler: SamplerParams = SamplerParams(),
                 stop: List<String> = emptyList(), endToken: Int = endOfText, onPiece: (String) -> Unit = {}): String =
        Sampler(sampler, vocabSize).use { generate(prompt, maxTokens, it, stop, endToken, onPiece) }

    /** generate() with a [sampler] that goes on from its earlier draws (its random generator, its penalty counts). */
    fun generate(prompt: String, maxTokens: Int, sampler: Sampler, stop: List<String> = emptyList(),
                 endToken: Int = endOfText, onPiece: (String) -> Unit = {}): String {
        val text = ByteArrayOutputStream()
        generateTokens(utf8(prompt), maxTokens, sampler, stop, endToken) { _, bytes ->
            if (bytes.isNotEmpty()) {
                text.write(bytes, 0, bytes.size)
                onPiece(String(bytes, Charsets.UTF_8)) // released text never ends inside a character
            }
            true
        }
        return String(text.toByteArray(), Charsets.UTF_8)
    }

    /**
     * generate() at the level of the C call: [listener] sees every token id and its raw bytes and may
     * stop. Returns the number of tokens delivered.
     */
    fun generateTokens(prompt: ByteArray, maxTokens: Int, sampler: Sampler, stop: List<String> = emptyList(),
                       endToken: Int = -1, listener: TokenListener): Int =
        RwkvEdgeNative.generate(model(), session(), sampler.handle(), prompt, maxTokens,
                                stop.map(::utf8).toTypedArray(), endToken, listener)

    /** Free the session and the model; later calls throw IllegalStateException. Closing twice is fine. */
    override fun close() {
        if (session != 0L) RwkvEdgeNative.freeSession(session)
        if (model != 0L) RwkvEdgeNative.closeModel(model)
        session = 0
        model = 0
    }
}

/** Every native function of librwkv_edge_jni.so (runtime/cpp/jni/rwkv_edge_jni.cc), in one place. */
internal object RwkvEdgeNative {
    init {
        System.loadLibrary("rwkv_edge_jni") // its dependencies (librwkv_edge.so, TVM's) load with it (Android 6+)
    }

    @JvmStatic external fun open(dir: ByteArray, threads: Int, expectSha256: ByteArray?): Long
    @JvmStatic external fun closeModel(model: Long)
    @JvmStatic external fun vocabSize(model: Long): Int
    @JvmStatic external fun architecture(model: Long): String
    @JvmStatic external fun tokenizerName(model: Long): String
    @JvmStatic external fun endOfText(model: Long): Int
    @JvmStatic external fun tokenize(model: Long, text: ByteArray): IntArray
    @JvmStatic external fun tokenBytes(model: Long, id: Int): ByteArray
    @JvmStatic external fun detokenize(model: Long, ids: IntArray): ByteArray
    @JvmStatic external fun newSession(model: Long): Long
    @JvmStatic external fun freeSession(session: Long)
    @JvmStatic external fun reset(session: Long)
    @JvmStatic external fun prefill(session: Long, tokens: IntArray)
    @JvmStatic external fun step(session: Long, token: Int)
    @JvmStatic external fun logits(model: Long, session: Long): FloatArray
    @JvmStatic external fun getState(model: Long, session: Long): FloatArray
    @JvmStatic external fun setState(session: Long, values: FloatArray)
    @JvmStatic external fun saveState(session: Long, path: ByteArray)
    @JvmStatic external fun loadState(session: Long, path: ByteArray)
    @JvmStatic external fun newSampler(temperature: Double, topP: Double, topK: Int, presencePenalty: Double,
                                       frequencyPenalty: Double, penaltyDecay: Double, seed: Long, vocabSize: Int): Long
    @JvmStatic external fun freeSampler(sampler: Long)
    @JvmStatic external fun sample(sampler: Long, logits: FloatArray): Int
    @JvmStatic external fun generate(model: Long, session: Long, sampler: Long, prompt: ByteArray, maxTokens: Int,
                                     stop: Array<ByteArray>?, endToken: Int, listener: TokenListener?): Int
}
