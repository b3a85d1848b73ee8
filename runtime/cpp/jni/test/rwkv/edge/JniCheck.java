package rwkv.edge;

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

/**
 * Drives librwkv_edge_jni.so through RwkvEdgeNative for tests/native/test_jni.py: one command a line
 * on stdin, one answer a line on stdout. Byte strings travel as "x" + hex (so that any bytes, the empty
 * string included, survive the command line); float arrays as the hex of their float32 little-endian
 * bytes. Answers: "ok ...", "error CODE xMESSAGE" (an RwkvEdgeException), "throw CLASS xMESSAGE"
 * (anything else thrown).
 *
 *   open xDIR THREADS xPIN|none      info -> ok VOCAB xARCH xTOKENIZER
 *   tokenize xTEXT -> ok IDS...       detokenize IDS... -> ok xBYTES      tokenbytes ID -> ok xBYTES
 *   prefill IDS...   step ID   reset   logits -> ok xF32   state -> ok xF32   setstate xF32
 *   save xPATH   load xPATH   close (frees the handles and zeroes them: later calls pass 0)
 *   sampler TEMPERATURE TOP_P TOP_K PRESENCE FREQUENCY DECAY SEED   sample -> ok ID   samplefrom xF32 -> ok ID
 *   generate MODE K xPROMPT MAX_TOKENS END_TOKEN xSTOP... -> ok COUNT IDS PIECES
 *     MODE all: go on; stop: return false at the K-th call; throw: throw IllegalStateException at the K-th.
 *     IDS and PIECES: comma-joined ids and xBYTES of every listener call ("-" for none).
 */
public final class JniCheck {
    private long model;
    private long session;
    private long sampler;

    public static void main(String[] args) throws Exception {
        JniCheck check = new JniCheck();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.US_ASCII));
        for (String line = in.readLine(); line != null; line = in.readLine()) {
            if (line.isBlank()) continue;
            String answer;
            try {
                answer = "ok" + check.run(line.trim().split(" "));
            } catch (RwkvEdgeException e) {
                answer = "error " + e.getCode() + " " + hex(e.getMessage().getBytes(StandardCharsets.UTF_8));
            } catch (RuntimeException e) {
                String message = e.getMessage() == null ? "" : e.getMessage();
                answer = "throw " + e.getClass().getName() + " " + hex(message.getBytes(StandardCharsets.UTF_8));
            }
            System.out.println(answer);
        }
        check.run(new String[] {"close"});
    }

    private String run(String[] a) {
        switch (a[0]) {
            case "open":
                byte[] pin = a[3].equals("none") ? null : bytes(a[3]);
                model = RwkvEdgeNative.open(bytes(a[1]), Integer.parseInt(a[2]), pin);
                session = RwkvEdgeNative.newSession(model);
                return "";
            case "info":
                return " " + RwkvEdgeNative.vocabSize(model) + " " + utf8(RwkvEdgeNative.architecture(model)) + " "
                        + utf8(RwkvEdgeNative.tokenizerName(model)) + " " + RwkvEdgeNative.endOfText(model);
            case "tokenize":
                return ids(RwkvEdgeNative.tokenize(model, bytes(a[1])), " ");
            case "detokenize":
                return " " + hex(RwkvEdgeNative.detokenize(model, parseIds(a, 1)));
            case "tokenbytes":
                return " " + hex(RwkvEdgeNative.tokenBytes(model, Integer.parseInt(a[1])));
            case "prefill":
                RwkvEdgeNative.prefill(session, parseIds(a, 1));
                return "";
            case "step":
                RwkvEdgeNative.step(session, Integer.parseInt(a[1]));
                return "";
            case "reset":
                RwkvEdgeNative.reset(session);
                return "";
            case "logits":
                return " " + floats(RwkvEdgeNative.logits(model, session));
            case "state":
                return " " + floats(RwkvEdgeNative.getState(model, session));
            case "setstate":
                RwkvEdgeNative.setState(session, parseFloats(a[1]));
                return "";
            case "save":
                RwkvEdgeNative.saveState(session, bytes(a[1]));
                return "";
            case "load":
                RwkvEdgeNative.loadState(session, bytes(a[1]));
                return "";
            case "sampler":
                RwkvEdgeNative.freeSampler(sampler);
                sampler = 0;
                sampler = RwkvEdgeNative.newSampler(Double.parseDouble(a[1]), Double.parseDouble(a[2]),
                        Integer.parseInt(a[3]), Double.parseDouble(a[4]), Double.parseDouble(a[5]),
                        Double.parseDouble(a[6]), Long.parseUnsignedLong(a[7]), RwkvEdgeNative.vocabSize(model));
                return "";
            case "sample":
                return " " + RwkvEdgeNative.sample(sampler, RwkvEdgeNative.logits(model, session));
            case "samplefrom":
                return " " + RwkvEdgeNative.sample(sampler, parseFloats(a[1]));
            case "generate":
                return generate(a);
            case "close":
                RwkvEdgeNative.freeSampler(sampler);
                RwkvEdgeNative.freeSession(session);
                RwkvEdgeNative.closeModel(model);
                sampler = session = model = 0;
                return "";
            default:
                throw new IllegalArgumentException("unknown command " + a[0]);
        }
    }

    private String generate(String[] a) {
        String mode = a[1];
        int k = Integer.parseInt(a[2]);
        List<Integer> tokens = new ArrayList<>();
        List<String> pieces = new ArrayList<>();
        TokenListener listener = (token, text) -> {
            tokens.add(token);
            pieces.add(hex(text));
            if (tokens.size() == k && mode.equals("throw")) throw new IllegalStateException("listener threw at " + k);
            return !(tokens.size() == k && mode.equals("stop"));
        };
        byte[][] stop = new byte[a.length - 6][];
        for (int i = 6; i < a.length; i++) stop[i - 6] = bytes(a[i]);
        int count = RwkvEdgeNative.generate(model, session, sampler, bytes(a[3]), Integer.parseInt(a[4]), stop,
                Integer.parseInt(a[5]), listener);
        return " " + count + " " + (tokens.isEmpty() ? "-" : join(tokens)) + " "
                + (pieces.isEmpty() ? "-" : String.join(",", pieces));
    }

    private static String join(List<Integer> values) {
        StringBuilder out = new StringBuilder();
        for (int v : values) out.append(out.length() == 0 ? "" : ",").append(v);
        return out.toString();
    }

    private static String ids(int[] values, String separator) {
        StringBuilder out = new StringBuilder();
        for (int v : values) out.append(separator).append(v);
        return out.toString();
    }

    private static int[] parseIds(String[] a, int from) {
        int[] ids = new int[a.length - from];
        for (int i = from; i < a.length; i++) ids[i - from] = Integer.parseInt(a[i]);
        return ids;
    }

    private static String utf8(String text) {
        return hex(text.getBytes(StandardCharsets.UTF_8));
    }

    private static String hex(byte[] bytes) {
        StringBuilder out = new StringBuilder("x");
        for (byte b : bytes) out.append(String.format("%02x", b & 0xff));
        return out.toString();
    }

    private static byte[] bytes(String x) {
        if (!x.startsWith("x") || x.length() % 2 != 1) throw new IllegalArgumentException("not x + hex: " + x);
        byte[] out = new byte[(x.length() - 1) / 2];
        for (int i = 0; i < out.length; i++) out[i] = (byte) Integer.parseInt(x.substring(1 + 2 * i, 3 + 2 * i), 16);
        return out;
    }

    private static String floats(float[] values) {
        ByteBuffer buffer = ByteBuffer.allocate(4 * values.length).order(ByteOrder.LITTLE_ENDIAN);
        buffer.asFloatBuffer().put(values);
        return hex(buffer.array());
    }

    private static float[] parseFloats(String x) {
        float[] values = new float[(x.length() - 1) / 8];
        ByteBuffer.wrap(bytes(x)).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(values);
        return values;
    }
}
