using SharpLens.Tensors;

namespace SharpLens.Testing;

/// <summary>Baselines for the live-handle leak checks.</summary>
public static class LiveTensorCount
{
    /// <summary>
    /// <see cref="Torch.LiveTensors"/> after a full garbage collection and the finalizers it queued. A tensor an earlier
    /// test dropped without disposing is freed by its finalizer whenever the GC next runs; read raw, the baseline would
    /// still count it, and a check could see the count fall below where it started (a "-30 tensors leaked" that
    /// depends on when the GC ran). Only the baseline is settled: settling after the work too would let the finalizer
    /// free, and so hide, a tensor the code under test forgot to dispose.
    /// </summary>
    public static long Settled()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        return Torch.LiveTensors;
    }
}
