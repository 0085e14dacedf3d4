function [Y, mu, sigmaSq] = batchnorm(X, offset, scaleFactor, varargin)
% STAND-IN, NOT MATLAB's batchnorm (bnconform tests, GNU Octave). Written from MathWorks' documentation of
% batchnorm to test the MATLAB runner's plumbing: statistics over every dimension but 'C'; biased variance;
% 5 inputs/3 outputs: normalize with the batch statistics and return phi*batch + (1-phi)*given;
% 5 inputs/1 output: normalize with the given statistics; 3 inputs: batch statistics, returned as they are.
% Options MeanDecay, VarianceDecay (default 0.1) and Epsilon (default 1e-5). It proves nothing about MATLAB.
given = numel(varargin) >= 2 && isnumeric(varargin{1});
opts = struct('MeanDecay', 0.1, 'VarianceDecay', 0.1, 'Epsilon', 1e-5);
rest = varargin(1 + 2 * given:end);
for k = 1:2:numel(rest)
    opts.(rest{k}) = rest{k + 1};
end
x = X.data;
c = find(X.fmt == 'C');
shape = ones(1, max(ndims(x), numel(X.fmt)));
shape(c) = size(x, c);
dims = setdiff(1:numel(shape), c);
m = x;
for d = dims
    m = mean(m, d);
end
dev = (x - m) .^ 2;
v = dev;
for d = dims
    v = mean(v, d);
end
if given && nargout == 1  % inference syntax: the given statistics normalize
    m = reshape(varargin{1}, shape);
    v = reshape(varargin{2}, shape);
end
y = reshape(scaleFactor, shape) .* (x - m) ./ sqrt(v + opts.Epsilon) + reshape(offset, shape);
Y = struct('data', cast(y, class(x)), 'fmt', X.fmt);
if given
    mu = opts.MeanDecay * m(:) + (1 - opts.MeanDecay) * varargin{1}(:);
    sigmaSq = opts.VarianceDecay * v(:) + (1 - opts.VarianceDecay) * varargin{2}(:);
else
    mu = m(:);
    sigmaSq = v(:);
end
end
