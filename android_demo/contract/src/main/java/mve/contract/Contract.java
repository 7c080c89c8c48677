package mve.contract;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.List;
import java.util.Map;

/** The preprocessing contract from preprocess.json: how to turn a photo into the model's input, and back. */
public final class Contract {
    /** The input's height and width, and the size a photo is scaled to cover before the centre crop. */
    public final int inputHeight;
    public final int inputWidth;
    public final int coverHeight;
    public final int coverWidth;
    public final float[] mean;
    public final float[] std;
    /** Scale and zero point of the quantized input and output (scale 0 for a float tensor). */
    public final double inputScale;
    public final int inputZeroPoint;
    public final double outputScale;
    public final int outputZeroPoint;
    public final String modelFile;
    /** Tensor types, "uint8", "int8" or "float32". */
    public final String inputType;
    public final String outputType;
    /** Every output of the model, in the file's order (a classifier has one: its logits). */
    public final List<Output> outputs;

    /** One output tensor as preprocess.json describes it. */
    public static final class Output {
        /** The output's name in the ONNX graph (the signature name in the .tflite). */
        public final String name;
        /** logits, class map, boxes, scores, embedding or tensor. */
        public final String kind;
        public final int[] shape;
        /** How the file lays it out, e.g. "NHWC (ONNX's NCHW with channels last)". */
        public final String layout;
        public final String type;
        /** 0 for a float32 output. */
        public final double scale;
        public final int zeroPoint;

        public Output(String name, String kind, int[] shape, String layout, String type, double scale, int zeroPoint) {
            this.name = name;
            this.kind = kind;
            this.shape = shape;
            this.layout = layout;
            this.type = type;
            this.scale = scale;
            this.zeroPoint = zeroPoint;
        }

        /** Elements in the tensor. */
        public int size() {
            int n = 1;
            for (int d : shape) {
                n *= d;
            }
            return n;
        }

        public boolean isQuantized() {
            return scale != 0;
        }
    }

    public Contract(int[] inputSize, int[] cover, float[] mean, float[] std, double inputScale, int inputZeroPoint,
                    double outputScale, int outputZeroPoint, String modelFile, String inputType, String outputType,
                    List<Output> outputs) {
        this.inputHeight = inputSize[0];
        this.inputWidth = inputSize[1];
        this.coverHeight = cover[0];
        this.coverWidth = cover[1];
        this.mean = mean;
        this.std = std;
        this.inputScale = inputScale;
        this.inputZeroPoint = inputZeroPoint;
        this.outputScale = outputScale;
        this.outputZeroPoint = outputZeroPoint;
        this.modelFile = modelFile;
        this.inputType = inputType;
        this.outputType = outputType;
        this.outputs = outputs;
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
        Map<String, String> kinds = new HashMap<String, String>();
        for (Object item : (List<Object>) root.get("outputs")) {
            Map<String, Object> described = (Map<String, Object>) item;
            kinds.put((String) described.get("name"), (String) described.get("kind"));
        }
        List<Output> outputs = new ArrayList<Output>();
        for (Object item : (List<Object>) entry.get("outputs")) {
            Map<String, Object> o = (Map<String, Object>) item;
            String name = (String) o.get("onnx_name");
            outputs.add(new Output(name, kinds.get(name), shape((List<Object>) o.get("shape")), (String) o.get("layout"),
                    (String) o.get("dtype"), number(o.get("scale")), (int) number(o.get("zero_point"))));
        }
        return new Contract(
                ints((List<Object>) root.get("input_size")),
                ints((List<Object>) resize.get("cover")),
                floats((List<Object>) root.get("mean")),
                floats((List<Object>) root.get("std")),
                number(input.get("scale")), (int) number(input.get("zero_point")),
                number(output.get("scale")), (int) number(output.get("zero_point")),
                (String) entry.get("file"), (String) input.get("dtype"), (String) output.get("dtype"), outputs);
    }

    public boolean isQuantized() {
        return inputScale != 0;
    }

    /** Whether the input is the camera's pixels as they are: uint8, scale 1/255, zero point 0, nothing normalized
     * (the export folds the normalization into the graph). Then the resized, cropped RGB bytes are the tensor. */
    public boolean takesPixels() {
        boolean identity = true;
        for (int c = 0; c < 3; c++) {
            identity &= mean[c] == 0f && std[c] == 1f;
        }
        return "uint8".equals(inputType) && inputZeroPoint == 0 && Math.abs(inputScale * 255.0 - 1.0) < 1e-6
                && identity;
    }

    /** Whether the model's output is quantized to dequantize (false: float32 logits, e.g. --int8-output float). */
    public boolean isOutputQuantized() {
        return outputScale != 0;
    }

    private static double number(Object value) {
        return value == null ? 0 : (Double) value;
    }

    private static int[] ints(List<Object> values) {
        if (values.size() != 2) {
            throw new IllegalArgumentException("expected [height, width], got " + values);
        }
        return shape(values);
    }

    private static int[] shape(List<Object> values) {
        int[] out = new int[values.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = ((Double) values.get(i)).intValue();
        }
        return out;
    }

    private static float[] floats(List<Object> values) {
        float[] out = new float[values.size()];
        for (int i = 0; i < out.length; i++) {
            out[i] = (float) ((Double) values.get(i)).doubleValue();
        }
        return out;
    }
}
