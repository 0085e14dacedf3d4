function bnconform_run(folder)
% BNCONFORM_RUN  bnconform exchange runner for MATLAB (Deep Learning Toolbox).
%
%   matlab -batch "addpath('DIR'); bnconform_run('DIR')"
%
% Reads DIR/manifest.json and its case files (format: docs/exchange.md in bnconform), runs every case through
%   matlab.batchnorm   batchnorm on a formatted dlarray: 5 inputs/3 outputs in training (normalizes with the
%                      mini-batch statistics, returns the updated statistics), 5 inputs/1 output in inference;
%                      3 inputs/3 outputs where the case keeps no running statistics
%   matlab.dlnetwork   a dlnetwork holding one batchNormalizationLayer: forward (training, net.State updated)
%                      and predict (inference)
% with gradients of <y, dy> at the last step through dlfeval/dlgradient (first order) and of <dx, v> (second
% order, 'EnableHigherDerivatives'), and writes one observation per case and API with jsonencode to
% DIR/observations/<api>/<case>.json (temporary name, then movefile: an interrupted run leaves whole files).
%
% Under GNU Octave (no Deep Learning Toolbox) it runs only against the test stand-ins of bnconform's tests
% (tests/octave/): then every observation names the stand-in, and `bnconform import` files it under a
% stand-in adapter, never as MATLAB's.
if nargin < 1
    folder = fileparts(mfilename('fullpath'));
end
manifest = jsondecode(fileread(fullfile(folder, 'manifest.json')));
if ~strcmp(manifest.format, 'bnconform-exchange') || manifest.version ~= 1
    error('bnconform:format', '%s: not a bnconform exchange folder of version 1', folder);
end
rt = runtime_facts();
apis = cellstr(manifest.adapters);
entries = manifest.cases;
if iscell(entries), entries = [entries{:}]; end
for k = 1:numel(entries)
    entry = entries(k);
    c = jsondecode(fileread(fullfile(folder, entry.file)));
    for a = 1:numel(apis)
        obs = struct('format', 'bnconform-exchange-observation', 'version', 1, 'case_id', c.case_id, ...
                     'adapter', apis{a}, 'case_sha256', entry.sha256, 'runtime', rt, 'skip', '', ...
                     'raised', '', 'values', struct(), 'unsupported', struct(), 'failed', struct());
        obs.runtime.api = apis{a};
        why = unsupported(c, apis{a});
        if ~isempty(why)
            obs.skip = why;
        else
            try
                [obs.values, obs.unsupported] = run_case(c, apis{a});
            catch err
                obs.raised = sprintf('%s: %s', err.identifier, err.message);
            end
        end
        write_observation(fullfile(folder, manifest.observations, apis{a}), c.case_id, obs);
    end
end
fprintf(2, 'bnconform_run: %d cases x %d APIs written to %s\n', numel(entries), numel(apis), ...
        fullfile(folder, manifest.observations));
end

function rt = runtime_facts()
% What ran: MATLAB and its Deep Learning Toolbox, or Octave with bnconform's test stand-ins.
standin = '';
if exist('bnconform_standin', 'file')
    standin = bnconform_standin();
end
if exist('OCTAVE_VERSION', 'builtin')
    rt = struct('name', 'GNU Octave', 'version', OCTAVE_VERSION, 'device', 'cpu', 'standin', standin);
else
    v = ver('nnet');
    toolbox = 'Deep Learning Toolbox not found';
    if ~isempty(v), toolbox = ['Deep Learning Toolbox ' v(1).Version]; end
    rt = struct('name', 'MATLAB', 'version', version(), 'device', 'cpu', 'host', toolbox, 'standin', standin);
end
end

function why = unsupported(c, api)
why = '';
if ~any(strcmp(c.dtype, {'float64', 'float32'}))
    why = sprintf('%s has no %s arithmetic on the CPU (single and double only)', api, c.dtype);
elseif isempty(c.momentum) && ~c.use_defaults
    why = 'MATLAB batch normalization has no cumulative average (MeanDecay/VarianceDecay are EMA weights)';
elseif ~strcmp(c.memory_format, 'contiguous')
    why = 'MATLAB arrays have no memory format: this case is its contiguous twin';
elseif strcmp(api, 'matlab.dlnetwork') && ~c.track_running_stats
    why = 'batchNormalizationLayer always keeps running statistics (predict always uses them)';
elseif strcmp(api, 'matlab.dlnetwork') && ~exist('dlnetwork')
    why = 'dlnetwork is not available in this runtime (no Deep Learning Toolbox)';
end
end

function [values, missing] = run_case(c, api)
shape = c.shape(:)';
[perm, fmt] = layout(shape, c.axis);
cast_to = 'double';
if strcmp(c.dtype, 'float32'), cast_to = 'single'; end
A = c.arrays;
C = shape(c.axis + 1);
if c.affine
    gamma = cast(decode(A.gamma), cast_to);
    beta = cast(decode(A.beta), cast_to);
else
    gamma = ones(C, 1, cast_to);
    beta = zeros(C, 1, cast_to);
end
mu = cast(decode(A.running_mean), cast_to);
sigmaSq = cast(decode(A.running_var), cast_to);
opts = {};
if ~c.use_defaults
    opts = {'MeanDecay', c.momentum, 'VarianceDecay', c.momentum, 'Epsilon', c.eps};
end
xs = A.xs;
if iscell(xs), xs = [xs{:}]; end
steps = numel(c.modes);
wants = cellstr(c.quantities);
grads_wanted = any(ismember({'dx', 'dgamma', 'dbeta', 'd2x', 'd2gamma'}, wants));
second = any(ismember({'d2x', 'd2gamma'}, wants));
can_differentiate = exist('dlgradient') > 0 && exist('dlfeval') > 0;  % functions, classes or built-ins
if strcmp(api, 'matlab.dlnetwork')
    net = make_network(shape, perm, fmt, gamma, beta, mu, sigmaSq, c.use_defaults, c.momentum, c.eps, ...
                       cast_to, xs(1));
end
ys = [];
means = [];
vars = [];
values = struct();
missing = struct();
for t = 1:steps
    X = dlarray(permute(cast(decode(xs(t)), cast_to), perm), fmt);
    training = strcmp(c.modes{t}, 'train');
    last = t == steps;
    if last && grads_wanted && can_differentiate
        dY = dlarray(permute(cast(decode(A.dy), cast_to), perm), fmt);
        V = dlarray(permute(cast(decode(A.v), cast_to), perm), fmt);
        if strcmp(api, 'matlab.dlnetwork')
            [Y, state, g] = dlfeval(@network_gradients, net, X, dY, V, training, second);
            if training, net.State = state; end
        else
            [Y, mu, sigmaSq, g] = dlfeval(@function_gradients, X, beta, gamma, mu, sigmaSq, opts, dY, V, ...
                                          training, c.track_running_stats, second);
        end
        values.dx = encode(ipermute(num(g.dx), perm), shape);
        if c.affine
            values.dgamma = encode(num(g.dgamma), C);
            values.dbeta = encode(num(g.dbeta), C);
        end
        if second
            values.d2x = encode(ipermute(num(g.d2x), perm), shape);
            if c.affine, values.d2gamma = encode(num(g.d2gamma), C); end
        end
    elseif strcmp(api, 'matlab.dlnetwork')
        if training
            [Y, state] = forward(net, X);
            net.State = state;
        else
            Y = predict(net, X);
        end
    else
        [Y, mu, sigmaSq] = function_step(X, beta, gamma, mu, sigmaSq, opts, training, c.track_running_stats);
    end
    if strcmp(api, 'matlab.dlnetwork')
        [mu, sigmaSq] = network_statistics(net);
    end
    ys = [ys; c_order(ipermute(num(Y), perm))];
    means = [means; num(mu(:))];
    vars = [vars; num(sigmaSq(:))];
end
values.y = encode_flat(ys, [steps shape], class(num(Y)));
if c.track_running_stats
    values.running_mean = encode_flat(means, [steps C], class(means));
    values.running_var = encode_flat(vars, [steps C], class(vars));
end
if grads_wanted && ~can_differentiate
    for q = {'dx', 'dgamma', 'dbeta', 'd2x', 'd2gamma'}
        missing.(q{1}) = 'dlfeval/dlgradient are not available in this runtime (no Deep Learning Toolbox)';
    end
end
why = sprintf('%s does not return the mini-batch statistics of a training step with running statistics', api);
missing.batch_mean = why;
missing.batch_var = why;
missing.num_batches_tracked = sprintf('%s keeps no step counter', api);
end

function [Y, mu, sigmaSq] = function_step(X, beta, gamma, mu, sigmaSq, opts, training, tracking)
% The two syntaxes of the user's question: 5 inputs/3 outputs (training: batch statistics normalize, given
% statistics are blended into the returned ones) and 5 inputs/1 output (inference: given statistics normalize).
if ~tracking
    eps_opt = epsilon_only(opts);
    [Y, ~, ~] = batchnorm(X, beta, gamma, eps_opt{:});  % batch statistics in both modes; nothing is kept
elseif training
    [Y, mu, sigmaSq] = batchnorm(X, beta, gamma, mu, sigmaSq, opts{:});
else
    eps_opt = epsilon_only(opts);
    Y = batchnorm(X, beta, gamma, mu, sigmaSq, eps_opt{:});
end
end

function o = epsilon_only(opts)
o = {};
k = find(strcmp(opts, 'Epsilon'));
if ~isempty(k), o = opts(k:k + 1); end
end

function [Y, mu, sigmaSq, g] = function_gradients(X, beta, gamma, mu, sigmaSq, opts, dY, V, training, tracking, second)
beta = dlarray(beta);
gamma = dlarray(gamma);
[Y, mu, sigmaSq] = function_step(X, beta, gamma, mu, sigmaSq, opts, training, tracking);
loss = sum(Y .* dY, 'all');
[g.dx, g.dgamma, g.dbeta] = dlgradient(loss, X, gamma, beta, 'EnableHigherDerivatives', second);
if second
    s = sum(g.dx .* V, 'all');
    [g.d2x, g.d2gamma] = dlgradient(s, X, gamma);
end
end

function net = make_network(shape, perm, fmt, gamma, beta, mu, sigmaSq, defaults, decay, eps, cast_to, x1)
C = numel(gamma);
nS = numel(fmt) - 2;
pshape = [ones(1, nS) C];
if nS == 0, pshape = [C 1]; end
args = {'TrainedMean', reshape(mu, pshape), 'TrainedVariance', reshape(sigmaSq, pshape), ...
        'Scale', reshape(gamma, pshape), 'Offset', reshape(beta, pshape)};
if ~defaults
    args = [args, {'MeanDecay', decay, 'VarianceDecay', decay, 'Epsilon', eps}];
end
net = dlnetwork(batchNormalizationLayer(args{:}), 'Initialize', false);
net = initialize(net, dlarray(permute(cast(decode(x1), cast_to), perm), fmt));
end

function [mu, sigmaSq] = network_statistics(net)
s = net.State;
mu = num(s.Value{strcmp(s.Parameter, 'TrainedMean')});
sigmaSq = num(s.Value{strcmp(s.Parameter, 'TrainedVariance')});
end

function [Y, state, g] = network_gradients(net, X, dY, V, training, second)
% forward = training (state returned), predict = inference (statistics are constants).
if training
    [Y, state] = forward(net, X);
else
    Y = predict(net, X);
    state = net.State;
end
loss = sum(Y .* dY, 'all');
[g.dx, gl] = dlgradient(loss, X, net.Learnables, 'EnableHigherDerivatives', second);
g.dgamma = gl.Value{strcmp(gl.Parameter, 'Scale')};
g.dbeta = gl.Value{strcmp(gl.Parameter, 'Offset')};
if second
    s = sum(g.dx .* V, 'all');
    [g.d2x, gl2] = dlgradient(s, X, net.Learnables);
    g.d2gamma = gl2.Value{strcmp(gl2.Parameter, 'Scale')};
end
end

function [perm, fmt] = layout(shape, axis)
% A C-order (N, ..., C, ...) case array as a formatted dlarray: spatial dimensions first, then 'C', then 'B'.
n = numel(shape);
spatial = setdiff(2:n, axis + 1);
perm = [spatial, axis + 1, 1];
fmt = [repmat('S', 1, numel(spatial)), 'CB'];
end

function x = num(x)
% Plain numeric data from a dlarray (or from the Octave test stand-in's struct).
if isa(x, 'dlarray')
    x = extractdata(x);
elseif isstruct(x) && isfield(x, 'data')
    x = x.data;
end
end

function A = decode(enc)
% A case array: base64 of little-endian float64 in C order -> a MATLAB array of the same logical shape.
v = typecast(matlab.net.base64decode(enc.data), 'double');
shape = enc.shape(:)';
if numel(shape) <= 1
    A = v(:);
    return;
end
A = permute(reshape(v, fliplr(shape)), numel(shape):-1:1);
end

function v = c_order(A)
% The elements of A in C (row-major) order, as a column.
if isvector(A)
    v = A(:);
else
    v = reshape(permute(A, ndims(A):-1:1), [], 1);
end
end

function enc = encode(A, shape)
enc = encode_flat(c_order(A), shape, class(A));
end

function enc = encode_flat(v, shape, cls)
names = struct('double', 'float64', 'single', 'float32');
if ~isfield(names, cls)
    error('bnconform:dtype', 'unexpected result class %s', cls);
end
% num2cell: jsonencode writes a 1-element array as a bare number; the format needs a list.
enc = struct('dtype', names.(cls), 'shape', {num2cell(shape)}, ...
             'data', matlab.net.base64encode(typecast(cast(v(:)', cls), 'uint8')));
end

function write_observation(dir, case_id, obs)
if ~exist(dir, 'dir')
    mkdir(dir);
end
final = fullfile(dir, [case_id '.json']);
tmp = [final '.tmp'];
fid = fopen(tmp, 'w');
if fid < 0
    error('bnconform:write', 'cannot write %s', tmp);
end
fwrite(fid, jsonencode(obs), 'char');
fclose(fid);
movefile(tmp, final);
end
