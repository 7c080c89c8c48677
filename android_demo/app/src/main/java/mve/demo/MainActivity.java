package mve.demo;

import android.app.Activity;
import android.content.Intent;
import android.content.res.AssetFileDescriptor;
import android.graphics.Bitmap;
import android.graphics.BitmapFactory;
import android.net.Uri;
import android.os.Bundle;
import android.os.SystemClock;
import android.provider.MediaStore;
import android.view.View;
import android.widget.Button;
import android.widget.ImageView;
import android.widget.LinearLayout;
import android.widget.TextView;
import java.io.ByteArrayOutputStream;
import java.io.FileInputStream;
import java.io.IOException;
import java.io.InputStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.MappedByteBuffer;
import java.nio.channels.FileChannel;
import java.util.List;
import mve.contract.Contract;
import mve.contract.Postprocess;
import mve.contract.Preprocess;
import org.tensorflow.lite.Interpreter;

/** Classifies a photo with the bundled int8 model, preprocessing it exactly as preprocess.json says. */
public class MainActivity extends Activity {
    private static final int PICK_PHOTO = 1;
    private static final int TAKE_PHOTO = 2;
    private static final int BENCHMARK_RUNS = 50;
    private static final int[] THREAD_CHOICES = {1, 2, 4};

    private Contract contract;
    private String[] labels;
    private MappedByteBuffer model;
    private Interpreter interpreter;
    private int threadChoice;
    private String[] samples;
    private int nextSample;
    private ByteBuffer input;
    private ImageView image;
    private TextView result;
    private Button threadsButton;

    @Override
    protected void onCreate(Bundle state) {
        super.onCreate(state);
        try {
            contract = Contract.fromJson(readAsset("preprocess.json"), "int8");
            labels = readAsset("labels.txt").split("\n");
            model = mapAsset(contract.modelFile);
            samples = getAssets().list("samples");
        } catch (IOException e) {
            throw new IllegalStateException("the app's assets are missing: run python -m pipeline.bundle", e);
        }
        buildInterpreter();
        setContentView(buildLayout());
    }

    private View buildLayout() {
        LinearLayout buttons = new LinearLayout(this);
        buttons.addView(button("Gallery", new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                Intent pick = new Intent(Intent.ACTION_GET_CONTENT).setType("image/*");
                startActivityForResult(pick, PICK_PHOTO);
            }
        }));
        buttons.addView(button("Camera", new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                startActivityForResult(new Intent(MediaStore.ACTION_IMAGE_CAPTURE), TAKE_PHOTO);
            }
        }));
        buttons.addView(button("Sample", new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                showSample();
            }
        }));
        threadsButton = button("Threads: 1", new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                threadChoice = (threadChoice + 1) % THREAD_CHOICES.length;
                threadsButton.setText("Threads: " + THREAD_CHOICES[threadChoice]);
                buildInterpreter();
            }
        });
        buttons.addView(threadsButton);
        buttons.addView(button("Benchmark", new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                benchmark();
            }
        }));
        image = new ImageView(this);
        image.setAdjustViewBounds(true);
        image.setMaxHeight(800);
        result = new TextView(this);
        result.setTextSize(16);
        result.setText("Choose a photo.");
        LinearLayout root = new LinearLayout(this);
        root.setOrientation(LinearLayout.VERTICAL);
        root.addView(buttons);
        root.addView(image);
        root.addView(result);
        return root;
    }

    private Button button(String text, View.OnClickListener listener) {
        Button b = new Button(this);
        b.setText(text);
        b.setOnClickListener(listener);
        return b;
    }

    private void buildInterpreter() {
        if (interpreter != null) {
            interpreter.close();
        }
        Interpreter.Options options = new Interpreter.Options()
                .setNumThreads(THREAD_CHOICES[threadChoice])
                .setUseXNNPACK(true);
        interpreter = new Interpreter(model, options);
    }

    @Override
    protected void onActivityResult(int requestCode, int resultCode, Intent data) {
        super.onActivityResult(requestCode, resultCode, data);
        if (resultCode != RESULT_OK || data == null) {
            return;
        }
        try {
            if (requestCode == PICK_PHOTO && data.getData() != null) {
                classify(decode(getContentResolver().openInputStream(data.getData())));
            } else if (requestCode == TAKE_PHOTO && data.getExtras() != null) {
                classify((Bitmap) data.getExtras().get("data"));
            }
        } catch (IOException e) {
            result.setText("Cannot read the photo: " + e.getMessage());
        }
    }

    private void showSample() {
        if (samples == null || samples.length == 0) {
            result.setText("No sample photos bundled.");
            return;
        }
        String name = samples[nextSample++ % samples.length];
        try {
            classify(decode(getAssets().open("samples/" + name)));
        } catch (IOException e) {
            result.setText("Cannot read " + name + ": " + e.getMessage());
        }
    }

    private static Bitmap decode(InputStream stream) throws IOException {
        try {
            BitmapFactory.Options options = new BitmapFactory.Options();
            options.inPreferredConfig = Bitmap.Config.ARGB_8888;
            Bitmap bitmap = BitmapFactory.decodeStream(stream, null, options);
            if (bitmap == null) {
                throw new IOException("not an image");
            }
            return bitmap;
        } finally {
            stream.close();
        }
    }

    private void classify(Bitmap bitmap) {
        image.setImageBitmap(bitmap);
        int w = bitmap.getWidth();
        int h = bitmap.getHeight();
        int[] argb = new int[w * h];
        bitmap.getPixels(argb, 0, w, 0, 0, w, h);
        // a model that takes pixels (the default export) gets the resized, cropped camera bytes as they are
        byte[] tensor = Preprocess.toQuantized(Preprocess.rgbFromArgb(argb), w, h, contract);
        input = ByteBuffer.allocateDirect(tensor.length).order(ByteOrder.nativeOrder());
        input.put(tensor);
        ByteBuffer output = outputBuffer();
        long start = SystemClock.elapsedRealtimeNanos();
        input.rewind();
        interpreter.run(input, output);
        double ms = (SystemClock.elapsedRealtimeNanos() - start) / 1e6;
        byte[] raw = new byte[output.capacity()];
        output.rewind();
        output.get(raw);
        List<Postprocess.Prediction> top = Postprocess.topK(Postprocess.logits(raw, contract), labels, 5);
        StringBuilder text = new StringBuilder();
        for (Postprocess.Prediction p : top) {
            text.append(String.format("%5.1f%%  %s%n", 100 * p.probability, p.label));
        }
        text.append(String.format("inference %.2f ms, %d thread(s)", ms, THREAD_CHOICES[threadChoice]));
        result.setText(text.toString());
    }

    /** The output tensor: uint8 or int8 codes, or little-endian float32 logits (--int8-output float). */
    private ByteBuffer outputBuffer() {
        int bytes = labels.length * (contract.isOutputQuantized() ? 1 : 4);
        return ByteBuffer.allocateDirect(bytes).order(ByteOrder.LITTLE_ENDIAN);
    }

    private void benchmark() {
        if (input == null) {
            result.setText("Classify a photo first.");
            return;
        }
        ByteBuffer output = outputBuffer();
        input.rewind();
        interpreter.run(input, output);  // warm-up
        long start = SystemClock.elapsedRealtimeNanos();
        for (int i = 0; i < BENCHMARK_RUNS; i++) {
            input.rewind();
            output.rewind();
            interpreter.run(input, output);
        }
        double average = (SystemClock.elapsedRealtimeNanos() - start) / 1e6 / BENCHMARK_RUNS;
        result.append(String.format("%nbenchmark: %.2f ms average of %d runs", average, BENCHMARK_RUNS));
    }

    private String readAsset(String name) throws IOException {
        InputStream in = getAssets().open(name);
        try {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            byte[] buffer = new byte[8192];
            for (int n; (n = in.read(buffer)) > 0; ) {
                out.write(buffer, 0, n);
            }
            return out.toString("UTF-8");
        } finally {
            in.close();
        }
    }

    private MappedByteBuffer mapAsset(String name) throws IOException {
        AssetFileDescriptor fd = getAssets().openFd(name);  // needs the asset stored uncompressed (build.gradle)
        FileInputStream stream = new FileInputStream(fd.getFileDescriptor());
        try {
            return stream.getChannel().map(FileChannel.MapMode.READ_ONLY, fd.getStartOffset(), fd.getDeclaredLength());
        } finally {
            stream.close();
        }
    }

    @Override
    protected void onDestroy() {
        if (interpreter != null) {
            interpreter.close();
        }
        super.onDestroy();
    }
}
