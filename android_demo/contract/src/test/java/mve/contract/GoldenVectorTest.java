package mve.contract;

import static org.junit.Assert.assertArrayEquals;
import static org.junit.Assert.assertEquals;
import static org.junit.Assert.assertFalse;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.Test;

/**
 * Golden vectors written by `python -m pipeline.bundle` from real photos: the decoded RGB pixels, the quantized input
 * tensor the export pipeline computes from them, every output the model gives (int8 codes, or float32 with
 * --int8-output float) with its values, and a classifier's top-5 classes.
 */
public class GoldenVectorTest {
    private static final Path GOLDEN = Paths.get(System.getProperty("golden.dir", "src/test/resources/golden"));

    private static String read(Path path) throws IOException {
        return new String(Files.readAllBytes(path), StandardCharsets.UTF_8);
    }

    @SuppressWarnings("unchecked")
    private static List<Map<String, Object>> cases() throws IOException {
        List<Map<String, Object>> out = new ArrayList<Map<String, Object>>();
        for (Object item : (List<Object>) Json.parse(read(GOLDEN.resolve("cases.json")))) {
            out.add((Map<String, Object>) item);
        }
        if (out.isEmpty()) {
            throw new IllegalStateException("no golden vectors in " + GOLDEN + ": run python -m pipeline.bundle");
        }
        return out;
    }

    private static Contract contract() throws IOException {
        return Contract.fromJson(read(GOLDEN.resolve("preprocess.json")), "int8");
    }

    private static byte[] bytes(Map<String, Object> c, String key) throws IOException {
        return Files.readAllBytes(GOLDEN.resolve((String) c.get(key)));
    }

    private static int dim(Map<String, Object> c, String key) {
        return ((Double) c.get(key)).intValue();
    }

    private static byte[] input(Map<String, Object> c, Contract contract) throws IOException {
        return Preprocess.toQuantized(bytes(c, "pixels"), dim(c, "width"), dim(c, "height"), contract);
    }

    @Test
    public void inputTensorIsBitExact() throws IOException {
        Contract contract = contract();
        for (Map<String, Object> c : cases()) {
            assertArrayEquals("input tensor of " + c.get("name"), bytes(c, "input"), input(c, contract));
        }
    }

    @Test
    @SuppressWarnings("unchecked")
    public void everyOutputReadsAsThePipeline() throws IOException {
        Contract contract = contract();
        for (Map<String, Object> c : cases()) {
            List<Object> written = (List<Object>) c.get("outputs");
            assertEquals("outputs of " + c.get("name"), written.size(), contract.outputs.size());
            for (int k = 0; k < written.size(); k++) {
                Map<String, Object> w = (Map<String, Object>) written.get(k);
                Contract.Output output = contract.outputs.get(k);
                assertEquals(w.get("name"), output.name);
                float[] want = new float[output.size()];
                ByteBuffer.wrap(bytes(w, "values")).order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer().get(want);
                assertArrayEquals(output.name + " of " + c.get("name"), want, Postprocess.values(bytes(w, "raw"), output),
                        0f);
            }
        }
    }

    @Test
    public void topFiveMatchesThePipeline() throws IOException {
        Contract contract = contract();
        for (Map<String, Object> c : cases()) {
            if (!c.containsKey("top5")) {
                continue;  // not a classifier: no labels, no top-5
            }
            String[] labels = read(GOLDEN.resolve("labels.txt")).split("\n");
            float[] logits = Postprocess.logits(bytes(c, "output"), contract);
            List<Postprocess.Prediction> top = Postprocess.topK(logits, labels, 5);
            int[] got = new int[top.size()];
            for (int i = 0; i < got.length; i++) {
                got[i] = top.get(i).index;
            }
            List<Object> expected = (List<Object>) c.get("top5");
            int[] want = new int[expected.size()];
            for (int i = 0; i < want.length; i++) {
                want[i] = ((Double) expected.get(i)).intValue();
            }
            assertArrayEquals("top-5 of " + c.get("name"), want, got);
            assertEquals(labels[want[0]], top.get(0).label);
        }
    }

    /** The mistakes the golden vectors exist to catch: each one changes the input tensor. */
    @Test
    public void commonMistakesAreCaught() throws IOException {
        Contract right = contract();
        Contract wrongMean = new Contract(new int[] {right.inputHeight, right.inputWidth},
                new int[] {right.coverHeight, right.coverWidth}, new float[] {0.5f, 0.5f, 0.5f},
                new float[] {0.5f, 0.5f, 0.5f}, right.inputScale, right.inputZeroPoint, right.outputScale,
                right.outputZeroPoint, right.modelFile, right.inputType, right.outputType, right.outputs);
        int otherZero = right.inputZeroPoint == 0 ? -128 : 0;  // int8's for a uint8 input, and the other way
        Contract wrongZeroPoint = new Contract(new int[] {right.inputHeight, right.inputWidth},
                new int[] {right.coverHeight, right.coverWidth}, right.mean, right.std,
                right.inputScale, otherZero, right.outputScale, right.outputZeroPoint, right.modelFile,
                right.inputType, right.outputType, right.outputs);
        for (Map<String, Object> c : cases()) {
            byte[] expected = bytes(c, "input");
            byte[] rgb = bytes(c, "pixels");
            byte[] bgr = rgb.clone();
            for (int i = 0; i < bgr.length; i += 3) {
                bgr[i] = rgb[i + 2];
                bgr[i + 2] = rgb[i];
            }
            int w = dim(c, "width");
            int h = dim(c, "height");
            assertFalse("BGR order must not pass", Arrays.equals(expected, Preprocess.toQuantized(bgr, w, h, right)));
            assertFalse("wrong mean/std must not pass", Arrays.equals(expected, Preprocess.toQuantized(rgb, w, h, wrongMean)));
            assertFalse("a wrong zero point must not pass",
                    Arrays.equals(expected, Preprocess.toQuantized(rgb, w, h, wrongZeroPoint)));
        }
    }
}
