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
        float scale = (float) contract.outputScale;
        boolean unsigned = "uint8".equals(contract.outputType);
        float[] out = new float[q.length];
        for (int i = 0; i < q.length; i++) {
            int code = unsigned ? q[i] & 0xff : q[i];
            out[i] = (code - contract.outputZeroPoint) * scale;
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
