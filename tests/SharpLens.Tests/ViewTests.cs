using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using SharpLens.Saes;
using SharpLens.Tensors.IO;
using SharpLens.Views;

namespace SharpLens.Tests;

/// <summary>
/// The HTML views are self-contained (no http or https address, no src, href, script, link, import or url() of any kind) and
/// hold the numbers they show: each value computed independently here (from the cache, the logits, the patch file) appears
/// in the page at the views' four decimals. Written by the library and by <c>lens view</c>.
/// </summary>
public class ViewTests : TempFolderTest
{
    private static void AssertSelfContained(string html)
    {
        Assert.That(html, Does.StartWith("<!DOCTYPE html>"));
        Assert.That(html, Does.Not.Contain("http://").And.Not.Contain("https://").And.Not.Contain("//"), "no address");
        foreach (var pattern in new[] { @"\bsrc\s*=", @"\bhref\s*=", @"<script", @"<link", @"@import", @"url\(", @"<iframe", @"<img" })
            Assert.That(Regex.IsMatch(html, pattern, RegexOptions.IgnoreCase), Is.False, $"no {pattern}");
    }

    private static string N(double v) => v.ToString("0.0000", CultureInfo.InvariantCulture);

    // Every run here in float64, so the page and the independent computation agree far below the views' four decimals.
    private static readonly string Model = Fixtures.Path("tiny-gpt2");
    private const string Ids = "5,17,290,33,8,17,290";

    [Test]
    public void AttentionViewHoldsEveryWeight()
    {
        var path = Path.Combine(Tmp, "attention.html");
        var r = Lens("view", "attention", Model, "--tokens", Ids, "--heads", "0.1,1.3", "--dtype", "float64", "--out", path);
        Assert.That(r.Code, Is.EqualTo(0), r.Err);
        var html = File.ReadAllText(path);
        AssertSelfContained(html);
        using var scope = Torch.NewScope();
        using var bridge = TransformerBridge.Load(Model, new BridgeOptions { DType = ScalarType.Float64 });
        var ids = GenerateIds();
        var (_, cache) = bridge.RunWithCache(ids);
        using (cache)
            foreach (var (layer, head) in new[] { (0, 1), (1, 3) })
            {
                Assert.That(html, Does.Contain($"L{layer}H{head}"));
                var pattern = cache["pattern", layer].Select(0, 0).Select(0, head).To(ScalarType.Float64).Contiguous().ToArray<double>();
                for (var q = 0; q < 7; q++)
                    for (var k = 0; k < 7; k++)
                        Assert.That(html, Does.Contain($"#{IdsArray[q]} → #{IdsArray[k]}: {N(pattern[q * 7 + k])}"), $"L{layer}H{head} ({q}, {k})");
            }
    }

    private static readonly long[] IdsArray = Ids.Split(',').Select(long.Parse).ToArray();

    private static Tensor GenerateIds() => Torch.FromArray(IdsArray, 1, IdsArray.Length);

    [Test]
    public void LogitLensViewHoldsTheTopTokenOfEveryLayer()
    {
        var path = Path.Combine(Tmp, "lens.html");
        var r = Lens("view", "logit-lens", Model, "--tokens", Ids, "--top", "3", "--dtype", "float64", "--out", path);
        Assert.That(r.Code, Is.EqualTo(0), r.Err);
        var html = File.ReadAllText(path);
        AssertSelfContained(html);
        // The last layer of the lens is the model itself: its top token and probability come from the logits of a plain forward pass.
        using var scope = Torch.NewScope();
        using var bridge = TransformerBridge.Load(Model, new BridgeOptions { DType = ScalarType.Float64 });
        var probs = bridge.Forward(GenerateIds()).Select(0, 0).To(ScalarType.Float64).Softmax(-1);
        var (p, ix) = probs.Max(-1);
        var (top, index) = (p.ToArray<double>(), ix.ToArray<long>());
        foreach (var label in new[] { "0_pre", "1_pre", "final_post" }) Assert.That(html, Does.Contain(label));
        for (var pos = 0; pos < 7; pos++)
            Assert.That(html, Does.Contain($"#{index[pos]}<small>{N(top[pos])}</small>").Or.Contain($"#{index[pos]}: {N(top[pos])}"), $"position {pos}");
    }

    [Test]
    public void PatchingViewHoldsEveryResult()
    {
        var prompts = Path.Combine(Tmp, "prompts.jsonl");
        File.WriteAllLines(prompts, [
            JsonSerializer.Serialize(new { clean = new[] { 1, 2, 3, 4, 5 }, corrupted = new[] { 1, 9, 3, 4, 5 }, answer = 7, wrong = 8 }),
            JsonSerializer.Serialize(new { clean = new[] { 6, 2, 3, 4, 5 }, corrupted = new[] { 6, 2, 9, 4, 5 }, answer = 7, wrong = 8 }),
        ]);
        var dir = Path.Combine(Tmp, "patch");
        Assert.That(Lens("patch", Model, "--prompts", prompts, "--out", dir, "--kind", "head_out").Code, Is.EqualTo(0));
        var path = Path.Combine(Tmp, "patch.html");
        var r = Lens("view", "patch", dir, "--pair", "1", "--out", path);
        Assert.That(r.Code, Is.EqualTo(0), r.Err);
        var html = File.ReadAllText(path);
        AssertSelfContained(html);
        var result = SafeTensors.Load(Path.Combine(dir, "patch.safetensors"));
        try
        {
            var values = result["head_out"].Select(0, 1).To(ScalarType.Float64).Contiguous().ToArray<double>();
            for (var l = 0; l < 2; l++)
                for (var h = 0; h < 4; h++)
                    Assert.That(html, Does.Contain($"L{l}, H{h}: {N(values[l * 4 + h])}"));
            Assert.That(html, Does.Contain(N(result["clean_metric"].Select(0, 1).ToDouble())));
        }
        finally
        {
            foreach (var t in result.Values) t.Dispose();
        }
        Assert.That(Lens("view", "patch", dir, "--out", Path.Combine(Tmp, "mean.html")).Code, Is.EqualTo(0));
        Assert.That(Lens("view", "patch", dir, "--pair", "2", "--out", path).Code, Is.EqualTo(1));
    }

    [Test]
    public void FeatureViewHoldsTheActivations()
    {
        // An SAE in SAELens's format on the residual stream, written here.
        var saeDir = Path.Combine(Tmp, "sae");
        Directory.CreateDirectory(saeDir);
        File.WriteAllText(Path.Combine(saeDir, "cfg.json"), new JsonObject { ["d_in"] = 64, ["d_sae"] = 6, ["hook_name"] = "blocks.1.hook_resid_pre", ["dtype"] = "float64" }.ToJsonString());
        using (var scope = Torch.NewScope())
        using (var g = new Generator(4))
            SafeTensors.Save(Path.Combine(saeDir, "sae_weights.safetensors"), new Dictionary<string, Tensor>
            {
                ["W_enc"] = Torch.Randn([64, 6], g), ["b_enc"] = Torch.Zeros(6), ["W_dec"] = Torch.Randn([6, 64], g), ["b_dec"] = Torch.Zeros(64),
            });
        var path = Path.Combine(Tmp, "features.html");
        var r = Lens("view", "features", Model, "--tokens", Ids, "--sae", saeDir, "--features", "0,4", "--dtype", "float64", "--out", path);
        Assert.That(r.Code, Is.EqualTo(0), r.Err);
        var html = File.ReadAllText(path);
        AssertSelfContained(html);
        using var scope2 = Torch.NewScope();
        using var bridge = TransformerBridge.Load(Model, new BridgeOptions { DType = ScalarType.Float64 });
        using var sae = Sae.Load(saeDir);
        var (_, cache) = bridge.RunWithCache(GenerateIds());
        using (cache)
        {
            var acts = sae.Encode(cache["resid_pre", 1]).Select(0, 0).To(ScalarType.Float64).Contiguous().ToArray<double>();  // [pos, 6]
            foreach (var f in new[] { 0, 4 })
            {
                Assert.That(html, Does.Contain($"feature {f}"));
                for (var p = 0; p < 7; p++) Assert.That(html, Does.Contain($"#{IdsArray[p]}: {N(acts[p * 6 + f])}"), $"feature {f} at {p}");
            }
        }
        Assert.That(Lens("view", "features", Model, "--tokens", Ids, "--sae", saeDir, "--out", Path.Combine(Tmp, "top.html")).Code, Is.EqualTo(0));
    }

    [Test]
    public void LibraryViewsEscapeTextAndRefuseMismatchedShapes()
    {
        var html = HtmlViews.FeatureActivations(["<b>", " & "], [("f", [1.0, 0.5])]);
        AssertSelfContained(html);
        Assert.That(html, Does.Contain("&lt;b&gt;").And.Not.Contain("<b>&"));
        Assert.Throws<ArgumentException>(() => HtmlViews.AttentionPatterns(["a"], [("h", new double[2, 2])]));
        Assert.Throws<ArgumentException>(() => HtmlViews.PatchingHeatmap(new double[2, 3], ["a", "b"], ["x"], "t"));
        var heat = HtmlViews.PatchingHeatmap(new double[,] { { 1, double.NaN } }, ["L0"], ["0", "1"], "t", cleanMetric: 2, corruptedMetric: 0);
        Assert.That(heat, Does.Contain("restores 0.5000").And.Contain("NaN"));
        var bad = Lens("view", "attention", Model, "--tokens", Ids, "--heads", "5.0", "--out", Path.Combine(Tmp, "x.html"));
        Assert.That(bad.Code, Is.EqualTo(1));
        Assert.That(bad.Err, Does.Contain("L5H0"));
    }
}
