package mve.contract;

import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.ArrayList;
import java.util.List;

/** Model output to labels: dequantize, softmax, top-k. */
public final class Postprocess {
    private Postprocess() {
    }

    /** One prediction: class index, label and softmax probability. */
    public static final class Prediction {
        public final int index;
        public final String label;
        public final float probability;

        Prediction(int index, String label, float probability) {
            this.index = index;
            this.label = label;
            this.probability = probability;
        }
    }

    /** Logits from the output tensor's raw bytes: uint8 or int8 codes to dequantize, or float32 little-endian. */
    public static float[] logits(byte[] raw, Contract contract) {
        if (contract.isOutputQuantized()) {
            return dequantize(raw, contract);
        }
        float[] out = new float[raw.length / 4];
        ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(out);
        return out;
    }

    public static float[] dequantize(byte[] q, Contract contract) {
        return dequantize(q, contract.outputType, contract.outputScale, contract.outputZeroPoint);
    }

    /** Any output's values from its raw bytes, in the file's layout (see the output's `layout`): its codes
     * dequantized, or float32 little-endian. */
    public static float[] values(byte[] raw, Contract.Output output) {
        int bytes = output.size() * (output.isQuantized() ? 1 : 4);
        if (raw.length != bytes) {
            throw new IllegalArgumentException("output " + output.name + " takes " + bytes + " bytes, got "
                    + raw.length);
        }
        if (output.isQuantized()) {
            return dequantize(raw, output.type, output.scale, output.zeroPoint);
        }
        float[] out = new float[output.size()];
        ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(out);
        return out;
    }

    private static float[] dequantize(byte[] q, String type, double scale, int zeroPoint) {
        boolean unsigned = "uint8".equals(type);
        float[] out = new float[q.length];
        for (int i = 0; i < q.length; i++) {
            int code = unsigned ? q[i] & 0xff : q[i];
            out[i] = (code - zeroPoint) * (float) scale;
        }
        return out;
    }

    public static float[] softmax(float[] logits) {
        float max = Float.NEGATIVE_INFINITY;
        for (float v : logits) {
            max = Math.max(max, v);
        }
        double sum = 0;
        double[] e = new double[logits.length];
        for (int i = 0; i < logits.length; i++) {
            e[i] = Math.exp(logits[i] - max);
            sum += e[i];
        }
        float[] out = new float[logits.length];
        for (int i = 0; i < logits.length; i++) {
            out[i] = (float) (e[i] / sum);
        }
        return out;
    }

    /** The k highest scores, highest first; ties go to the lower class index. */
    public static List<Prediction> topK(float[] logits, String[] labels, int k) {
        float[] probabilities = softmax(logits);
        boolean[] taken = new boolean[logits.length];
        List<Prediction> out = new ArrayList<Prediction>();
        for (int n = 0; n < Math.min(k, logits.length); n++) {
            int best = -1;
            for (int i = 0; i < logits.length; i++) {
                if (!taken[i] && (best < 0 || logits[i] > logits[best])) {
                    best = i;
                }
            }
            taken[best] = true;
            out.add(new Prediction(best, labels[best], probabilities[best]));
        }
        return out;
    }
}
