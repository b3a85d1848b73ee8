package rwkv.edge;

/** RwkvEdge.kt's RwkvEdgeException as the JNI glue constructs it: (int code, String message). */
public class RwkvEdgeException extends RuntimeException {
    private static final long serialVersionUID = 1L;
    private final int code;

    public RwkvEdgeException(int code, String message) {
        super(message);
        this.code = code;
    }

    public int getCode() {
        return code;
    }
}
