// Drives runtime/cpp/android/RwkvEdge.kt on a host JVM for tests/native/test_jni.py, through its public
// API only. Arguments: BUNDLE PROMPT N STATE_PATH MISSING_DIR. Prints one "key value" line per check,
// texts as the hex of their UTF-8 bytes.
package rwkv.edge

import java.io.File

fun main(args: Array<String>) {
    val (bundle, prompt, count, statePath, missing) = args
    val n = count.toInt()
    RwkvEdge.open(bundle, threads = 1).use { model ->
        println("info ${model.vocabSize} ${model.architecture} ${model.tokenizerName} ${model.endOfText}")
        val pieces = StringBuilder()
        val text = model.generate(prompt, maxTokens = n, sampler = SamplerParams.GREEDY) { pieces.append(it) }
        println("text ${hex(text)}")
        println("pieces ${hex(pieces.toString())}")
        model.saveState(statePath)
    }
    RwkvEdge.open(File(bundle)).use { model ->
        model.loadState(statePath)
        println("more ${hex(model.generate("", maxTokens = n, sampler = SamplerParams.GREEDY))}")
        println("detokenized ${hex(model.detokenize(model.tokenize(prompt)))}")
    }
    try {
        RwkvEdge.open(missing)
    } catch (e: RwkvEdgeException) {
        println("error ${e.code} ${e.status} ${hex(e.message ?: "")}")
    }
    val closed = RwkvEdge.open(bundle)
    closed.close()
    closed.close()
    try {
        closed.logits()
    } catch (e: IllegalStateException) {
        println("closed ${hex(e.message ?: "")}")
    }
    RwkvEdge.open(bundle).use { model ->
        Sampler(SamplerParams.GREEDY, model.vocabSize).use { sampler ->
            try {
                model.generateTokens(prompt.toByteArray(), n, sampler) { _, _ ->
                    throw IllegalArgumentException("stop here")
                }
            } catch (e: IllegalArgumentException) {
                println("thrown ${hex(e.message ?: "")}")
            }
        }
    }
}

private fun hex(text: String): String = text.toByteArray(Charsets.UTF_8).joinToString("") { "%02x".format(it) }
