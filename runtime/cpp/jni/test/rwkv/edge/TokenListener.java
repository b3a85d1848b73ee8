package rwkv.edge;

/** RwkvEdge.kt's TokenListener: each token's id and released UTF-8 bytes; false stops. */
public interface TokenListener {
    boolean onToken(int token, byte[] text);
}
