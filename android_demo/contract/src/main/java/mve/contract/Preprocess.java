package mve.contract;

/**
 * Photo pixels to model input, exactly as the export pipeline does it (see preprocess.json): resize the shorter
 * side with Pillow's bilinear filter (antialiased when shrinking, 8-bit fixed point), centre-crop, scale to 0..1,
 * normalize per channel in float32, and for quantized inputs quantize with round-half-to-even; a model that takes
 * pixels (uint8, normalization folded into its graph) gets the cropped bytes as they are. NHWC, RGB.
 */
public final class Preprocess {
    private static final int PRECISION_BITS = 32 - 8 - 2;

    private Preprocess() {
    }

    /** ARGB pixels (as from Android's Bitmap.getPixels) to interleaved RGB bytes. */
    public static byte[] rgbFromArgb(int[] argb) {
        byte[] rgb = new byte[argb.length * 3];
        for (int i = 0; i < argb.length; i++) {
            rgb[3 * i] = (byte) (argb[i] >> 16);
            rgb[3 * i + 1] = (byte) (argb[i] >> 8);
            rgb[3 * i + 2] = (byte) argb[i];
        }
        return rgb;
    }

    /** The quantized (uint8 or int8) NHWC input tensor for an RGB image (interleaved bytes, width x height). */
    public static byte[] toQuantized(byte[] rgb, int width, int height, Contract contract) {
        if (contract.takesPixels()) {
            return toPixels(rgb, width, height, contract);
        }
        float[] x = toFloat(rgb, width, height, contract);
        float scale = (float) contract.inputScale;
        boolean unsigned = "uint8".equals(contract.inputType);
        byte[] q = new byte[x.length];
        for (int i = 0; i < x.length; i++) {
            double v = Math.rint(x[i] / scale) + contract.inputZeroPoint;
            q[i] = (byte) (unsigned ? Math.max(0, Math.min(255, v)) : Math.max(-128, Math.min(127, v)));
        }
        return q;
    }

    /** The resized, center-cropped RGB bytes (NHWC): the input tensor itself when the model takes pixels. */
    public static byte[] toPixels(byte[] rgb, int width, int height, Contract contract) {
        int cropHeight = contract.inputHeight;
        int cropWidth = contract.inputWidth;
        double scale = Math.max((double) contract.coverWidth / width, (double) contract.coverHeight / height);
        int newWidth = Math.max(cropWidth, (int) Math.rint(width * scale));
        int newHeight = Math.max(cropHeight, (int) Math.rint(height * scale));
        byte[] resized = resizeBilinear(rgb, width, height, newWidth, newHeight);
        int left = (newWidth - cropWidth) / 2;
        int top = (newHeight - cropHeight) / 2;
        byte[] out = new byte[cropHeight * cropWidth * 3];
        for (int y = 0; y < cropHeight; y++) {
            System.arraycopy(resized, ((top + y) * newWidth + left) * 3, out, y * cropWidth * 3, cropWidth * 3);
        }
        return out;
    }

    /** The float32 NHWC input tensor (normalized) for an RGB image. */
    public static float[] toFloat(byte[] rgb, int width, int height, Contract contract) {
        byte[] pixels = toPixels(rgb, width, height, contract);
        float[] out = new float[pixels.length];
        for (int i = 0; i < pixels.length; i++) {
            float unit = (float) (pixels[i] & 0xff) / 255.0f;
            out[i] = (unit - contract.mean[i % 3]) / contract.std[i % 3];
        }
        return out;
    }

    /** Pillow's Image.resize(..., BILINEAR) for 8-bit RGB: a horizontal then a vertical pass. */
    static byte[] resizeBilinear(byte[] rgb, int width, int height, int newWidth, int newHeight) {
        byte[] out = rgb;
        int w = width;
        if (newWidth != width) {
            out = resample(out, w, height, newWidth, true);
            w = newWidth;
        }
        if (newHeight != height) {
            out = resample(out, w, height, newHeight, false);
        }
        return out;
    }

    /** One pass along x (horizontal) or y; coefficients as Pillow computes them, in double, then fixed point. */
    private static byte[] resample(byte[] in, int width, int height, int outSize, boolean horizontal) {
        int inSize = horizontal ? width : height;
        double scale = (double) inSize / outSize;
        double filterScale = Math.max(scale, 1.0);
        double support = filterScale;  // the bilinear filter's support is 1
        int ksize = (int) Math.ceil(support) * 2 + 1;
        int[] bounds = new int[outSize * 2];
        int[] coeffs = new int[outSize * ksize];
        for (int xx = 0; xx < outSize; xx++) {
            double center = (xx + 0.5) * scale;
            double ss = 1.0 / filterScale;
            int xmin = Math.max((int) (center - support + 0.5), 0);
            int xmax = Math.min((int) (center + support + 0.5), inSize) - xmin;
            double[] k = new double[xmax];
            double ww = 0.0;
            for (int x = 0; x < xmax; x++) {
                double t = Math.abs((x + xmin - center + 0.5) * ss);
                k[x] = t < 1.0 ? 1.0 - t : 0.0;
                ww += k[x];
            }
            for (int x = 0; x < xmax; x++) {
                double v = ww != 0.0 ? k[x] / ww : k[x];
                coeffs[xx * ksize + x] = (int) (v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
            }
            bounds[2 * xx] = xmin;
            bounds[2 * xx + 1] = xmax;
        }
        int outWidth = horizontal ? outSize : width;
        int outHeight = horizontal ? height : outSize;
        byte[] out = new byte[outWidth * outHeight * 3];
        for (int y = 0; y < outHeight; y++) {
            for (int x = 0; x < outWidth; x++) {
                int i = horizontal ? x : y;
                int xmin = bounds[2 * i];
                int xmax = bounds[2 * i + 1];
                for (int c = 0; c < 3; c++) {
                    int sum = 1 << (PRECISION_BITS - 1);
                    for (int t = 0; t < xmax; t++) {
                        int src = horizontal ? (y * width + xmin + t) : ((xmin + t) * width + x);
                        sum += (in[src * 3 + c] & 0xff) * coeffs[i * ksize + t];
                    }
                    out[(y * outWidth + x) * 3 + c] = (byte) Math.max(0, Math.min(255, sum >> PRECISION_BITS));
                }
            }
        }
        return out;
    }
}
