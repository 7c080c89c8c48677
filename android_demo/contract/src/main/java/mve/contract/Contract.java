package mve.contract;

import java.util.List;
import java.util.Map;

/** The preprocessing contract from preprocess.json: how to turn a photo into the model's input, and back. */
public final class Contract {
    public final int inputSize;
    public final int shorterSide;
    public final float[] mean;
    public final float[] std;
    /** Scale and zero point of the int8 input and output (scale 0 for a float model). */
    public final double inputScale;
    public final int inputZeroPoint;
    public final double outputScale;
    public final int outputZeroPoint;
    public final String modelFile;

    public Contract(int inputSize, int shorterSide, float[] mean, float[] std, double inputScale, int inputZeroPoint,
                    double outputScale, int outputZeroPoint, String modelFile) {
        this.inputSize = inputSize;
        this.shorterSide = shorterSide;
        this.mean = mean;
        this.std = std;
        this.inputScale = inputScale;
        this.inputZeroPoint = inputZeroPoint;
        this.outputScale = outputScale;
        this.outputZeroPoint = outputZeroPoint;
        this.modelFile = modelFile;
    }

    /** Reads the contract of one variant ("int8", "fp32", ...) from the text of preprocess.json. */
    @SuppressWarnings("unchecked")
    public static Contract fromJson(String json, String variant) {
        Map<String, Object> root = (Map<String, Object>) Json.parse(json);
        if (!"NHWC".equals(root.get("layout")) || !"RGB".equals(root.get("color_order"))) {
            throw new IllegalArgumentException("this code expects an NHWC, RGB model; preprocess.json says "
                    + root.get("layout") + ", " + root.get("color_order"));
        }
        Map<String, Object> resize = (Map<String, Object>) root.get("resize");
        Map<String, Object> variants = (Map<String, Object>) root.get("variants");
        Map<String, Object> entry = (Map<String, Object>) variants.get(variant);
        if (entry == null) {
            throw new IllegalArgumentException("preprocess.json has no '" + variant + "' variant");
        }
        Map<String, Object> input = (Map<String, Object>) entry.get("input");
        Map<String, Object> output = (Map<String, Object>) entry.get("output");
        return new Contract(
                ((Double) root.get("input_size")).intValue(),
                ((Double) resize.get("shorter_side")).intValue(),
                floats((List<Object>) root.get("mean")),
                floats((List<Object>) root.get("std")),
                number(input.get("scale")), (int) number(input.get("zero_point")),
                number(output.get("scale")), (int) number(output.get("zero_point")),
                (String) entry.get("file"));
    }

    public boolean isQuantized() {
        return inputScale != 0;
    }

    /** Whether the model's output is int8 to dequantize (false: float32 logits, e.g. --int8-output float). */
    public boolean isOutputQuantized() {
        return outputScale != 0;
    }

    private static double number(Object value) {
        return value == null ? 0 : (Double) value;
    }

    private static float[] floats(List<Object> values) {
        float[] out = new float[values.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = (float) ((Double) values.get(i)).doubleValue();
        }
        return out;
    }
}
