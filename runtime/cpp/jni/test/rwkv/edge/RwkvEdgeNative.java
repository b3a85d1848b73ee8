package rwkv.edge;

/**
 * The native functions of librwkv_edge_jni.so exactly as runtime/cpp/android/RwkvEdge.kt declares them
 * (its object RwkvEdgeNative: static, same names, same JVM signatures), for a host JVM without a
 * Kotlin compiler. tests/native/test_jni.py holds the two lists equal.
 */
public final class RwkvEdgeNative {
    static {
        System.loadLibrary("rwkv_edge_jni");
    }

    private RwkvEdgeNative() {}

    public static native long open(byte[] dir, int threads, byte[] expectSha256);
    public static native void closeModel(long model);
    public static native int vocabSize(long model);
    public static native String architecture(long model);
    public static native String tokenizerName(long model);
    public static native int endOfText(long model);
    public static native int[] tokenize(long model, byte[] text);
    public static native byte[] tokenBytes(long model, int id);
    public static native byte[] detokenize(long model, int[] ids);
    public static native long newSession(long model);
    public static native void freeSession(long session);
    public static native void reset(long session);
    public static native void prefill(long session, int[] tokens);
    public static native void step(long session, int token);
    public static native float[] logits(long model, long session);
    public static native float[] getState(long model, long session);
    public static native void setState(long session, float[] values);
    public static native void saveState(long session, byte[] path);
    public static native void loadState(long session, byte[] path);
    public static native long newSampler(double temperature, double topP, int topK, double presencePenalty,
                                         double frequencyPenalty, double penaltyDecay, long seed, int vocabSize);
    public static native void freeSampler(long sampler);
    public static native int sample(long sampler, float[] logits);
    public static native int generate(long model, long session, long sampler, byte[] prompt, int maxTokens,
                                      byte[][] stop, int endToken, TokenListener listener);
}
